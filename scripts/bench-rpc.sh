#!/usr/bin/env bash
# Load benchmark of the query server: builds a database of KEYS keys (default 1,000,000)
# with `stateroot bench`, serves it, and drives stateroot_getroot, stateroot_get and
# stateroot_prove with wrk (2 client threads, CONNECTIONS connections, DURATION seconds
# each), printing requests/s and p50/p99 latency per method.
#
#   ./scripts/bench-rpc.sh            KEYS=100000 DURATION=5 CONNECTIONS=8 RPC_THREADS=8 to change
set -euo pipefail
cd "$(dirname "$0")/.."

keys="${KEYS:-1000000}"
duration="${DURATION:-10}"
connections="${CONNECTIONS:-8}"
threads="${RPC_THREADS:-8}"  # the server's event loops (rpc_threads; 8 is its default)

./scripts/setup.sh
if ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk curl >/dev/null
fi
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target stateroot >/dev/null
bin="$PWD/build/tools/stateroot"

work="$(mktemp -d)"
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

echo "building a database of $keys keys..." >&2
"$bin" bench --keys "$keys" --block-keys 10000 --blocks 5 --db "$work/db" >/dev/null 2>&1
"$bin" serve --db "$work/db" --rpc-addr 127.0.0.1:0 --rpc-threads "$threads" >"$work/serve.out" 2>"$work/serve.err" &
server=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url="http://$(awk '/listening/ {print $2}' "$work/serve.out")/"

# Keys that exist: the puts of the tip height.
curl -s -X POST "$url" -d '{"jsonrpc":"2.0","method":"stateroot_getchanges","params":["latest"],"id":1}' |
  python3 -c 'import json, sys; print("\n".join(p[0] for p in json.load(sys.stdin)["result"]["puts"][:5000]))' \
  >"$work/keys.txt"

cat >"$work/method.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local method = os.getenv("METHOD")
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do keys[#keys + 1] = line end
local i = 0
request = function()
  i = i + 1
  local params = '["latest"]'
  if method ~= "stateroot_getroot" then params = '["' .. keys[(i % #keys) + 1] .. '","latest"]' end
  return wrk.format(nil, nil, nil, '{"jsonrpc":"2.0","method":"' .. method .. '","params":' .. params .. ',"id":1}')
end
LUA

printf "%-18s %12s %10s %10s\n" method "requests/s" p50 p99
for method in stateroot_getroot stateroot_get stateroot_prove; do
  out="$(METHOD=$method KEYS_FILE="$work/keys.txt" wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/method.lua" "$url")"
  rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
  p50="$(awk '$1 == "50%" {print $2}' <<<"$out")"
  p99="$(awk '$1 == "99%" {print $2}' <<<"$out")"
  errors="$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)"
  printf "%-18s %12s %10s %10s %s\n" "$method" "$rps" "$p50" "$p99" "$errors"
done
