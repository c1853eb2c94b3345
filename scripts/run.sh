#!/usr/bin/env bash
# The main job on the embedded default: builds if needed, applies the example change
# file (or the one given) into ./stateroot-data, and prints "<height> <root>" per height.
# Re-running is a no-op that prints the same roots.
#
#   ./scripts/run.sh [CHANGE_FILE]        STATEROOT_DB=DIR to use another database
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build build -j "$(nproc)" --target stateroot >/dev/null

db="${STATEROOT_DB:-stateroot-data}"
file="${1:-configs/examples/changes.jsonl}"
echo "applying $file to $db" >&2
build/tools/stateroot apply --db "$db" "$file"
