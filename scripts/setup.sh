#!/usr/bin/env bash
# Installs every build and test dependency from Debian packages.
# A fast no-op when they are all present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  librocksdb-dev libssl-dev libfmt-dev libspdlog-dev
  catch2 nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  python3
  clang-19 libclang-rt-19-dev  # the fuzz targets (scripts/fuzz.sh)
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
