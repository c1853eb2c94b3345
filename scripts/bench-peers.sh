#!/usr/bin/env bash
# Side by side with a peer: one operation stream (HEIGHTS x OPS operations, default
# 400 x 600 = 240,000) through `stateroot apply` (persisted, every height kept) and
# through @fuel-ts/merkle (npm; the same tree, in memory). Checks that the roots are
# equal at every height and prints both throughputs and their ratio.
#
#   ./scripts/bench-peers.sh          HEIGHTS=... OPS=... to change the stream
set -euo pipefail
cd "$(dirname "$0")/.."

heights="${HEIGHTS:-400}"
ops="${OPS:-600}"
for v in HEIGHTS OPS; do
  value="${!v:-1}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || [ "$value" -lt 1 ]; then
    echo "bench-peers: $v must be a whole number of at least 1, got \"$value\"" >&2
    exit 2
  fi
done
./scripts/setup.sh
command -v node >/dev/null && command -v npm >/dev/null || { echo "bench-peers: needs node and npm" >&2; exit 2; }
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target stateroot >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm init -y && npm install --silent @fuel-ts/merkle@0.103.0) >"$work/npm.log" 2>&1; then
  echo "bench-peers: npm could not install @fuel-ts/merkle@0.103.0 (is the npm registry reachable?):" >&2
  tail -5 "$work/npm.log" >&2 || true
  exit 2
fi
cp scripts/peers/fuel_stream.js "$work/"

python3 scripts/peers/make_stream.py "$work/stream.jsonl" "$heights" "$ops"
total="$(python3 -c 'import json,sys; print(sum(len(j.get("puts",[]))+len(j.get("deletes",[])) for j in map(json.loads, open(sys.argv[1]))))' "$work/stream.jsonl")"

start=$(date +%s.%N)
build/tools/stateroot apply --db "$work/db" "$work/stream.jsonl" >"$work/stateroot.txt"
ours=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')

(cd "$work" && node fuel_stream.js stream.jsonl >fuel.txt 2>fuel.err)
theirs=$(sed -n 's/.* in \([0-9.]*\) s/\1/p' "$work/fuel.err")

if ! cmp -s "$work/stateroot.txt" "$work/fuel.txt"; then
  echo "bench-peers: roots differ:" >&2
  diff "$work/stateroot.txt" "$work/fuel.txt" | head -5 >&2
  exit 1
fi
echo "$total operations over $heights heights: roots equal at every height"
awk -v n="$total" -v ours="$ours" -v theirs="$theirs" 'BEGIN {
  printf "%-28s %10.2f s %12.0f ops/s\n", "stateroot apply (on disk)", ours, n / ours
  printf "%-28s %10.2f s %12.0f ops/s\n", "@fuel-ts/merkle (memory)", theirs, n / theirs
  printf "ratio: stateroot is %.1f times as fast\n", theirs / ours
}'
