#!/usr/bin/env bash
# The main job on the embedded default: builds if needed, replays the real mainnet
# blocks 0-589 shipped in tests/fixtures/blocks into ./stateroot-data with the UTXO
# indexer, and prints "<tip height> <block hash> <state root>". Run again, it indexes
# nothing new and prints the same line.
#
#   ./scripts/run.sh [BLOCK_FILE...]      STATEROOT_DB=DIR to use another database
set -euo pipefail
# Paths given are relative to where the script is run from, not to the repository.
files=()
for f in "$@"; do files+=("$(realpath -- "$f")"); done
db="$(realpath -m -- "${STATEROOT_DB:-$(dirname "$0")/../stateroot-data}")"
cd "$(dirname "$0")/.."

./scripts/setup.sh
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build build -j "$(nproc)" --target stateroot >/dev/null

if [ ${#files[@]} -eq 0 ]; then
  files=(tests/fixtures/blocks/mainnet_0-589.blk)
fi
build/tools/stateroot index --db "$db" --blocks "${files[@]}"
