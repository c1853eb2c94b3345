#!/usr/bin/env bash
# The main job on the embedded default: builds if needed, replays the real mainnet
# blocks 0-589 shipped in tests/fixtures/blocks into ./stateroot-data with the UTXO
# indexer, and prints "<tip height> <block hash> <state root>". Run again, it indexes
# nothing new and prints the same line.
#
#   ./scripts/run.sh [BLOCK_FILE...]      STATEROOT_DB=DIR to use another database
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
if [ ! -f build/CMakeCache.txt ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build build -j "$(nproc)" --target stateroot >/dev/null

db="${STATEROOT_DB:-stateroot-data}"
if [ $# -eq 0 ]; then
  set -- tests/fixtures/blocks/mainnet_0-589.blk
fi
build/tools/stateroot index --db "$db" --blocks "$@"
