#!/usr/bin/env bash
# The performance matrix of docs/performance.md: `stateroot bench` for N in
# {100k, 1M, 10M} keys and K in {1, 100, 10k, 100k} changed keys per height, one run
# each, then a table (stdout) and a plot (gnuplot) of keys/s against N and p99 against K.
# Takes five to twenty minutes on 2 cores, most of it preloading ten million keys
# (into the engine, then into the raw-RocksDB ceiling's store).
#
#   ./scripts/bench-matrix.sh [OUT_DIR]      (default: the repository's docs/; a relative OUT_DIR is
#                                             taken from the caller's directory, and created if missing)
#   PLOT_ONLY=1 ./scripts/bench-matrix.sh    redraws the table and plot from OUT_DIR/performance.jsonl
#   BENCH_FLAGS="" ./scripts/bench-matrix.sh  without pipelined writes (default: --pipelined-writes)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/docs}"
if [ -n "${PLOT_ONLY:-}" ]; then
  [ -f "$out/performance.jsonl" ] || { echo "bench-matrix: no $out/performance.jsonl to plot" >&2; exit 2; }
else
  mkdir -p "$out"
fi
out="$(CDPATH='' cd -- "$out" && pwd)"
cd "$repo"

./scripts/setup.sh
if ! command -v gnuplot >/dev/null; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gnuplot-nox >/dev/null
fi
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)" --target stateroot >/dev/null

results="$out/performance.jsonl"
[ -n "${PLOT_ONLY:-}" ] || : >"$results"
for n in 100000 1000000 10000000; do
  [ -n "${PLOT_ONLY:-}" ] && break
  for k in 1 100 10000 100000; do
    case $k in 1) b=2000 ;; 100) b=300 ;; 10000) b=20 ;; *) b=5 ;; esac
    echo "N=$n K=$k B=$b" >&2
    # shellcheck disable=SC2086
    build/tools/stateroot bench --keys "$n" --block-keys "$k" --blocks "$b" ${BENCH_FLAGS---pipelined-writes} --json 2>/dev/null |
      tail -n 1 >>"$results"
  done
done

dat="$(mktemp -d)"
trap 'rm -rf "$dat"' EXIT
python3 - "$results" "$dat" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# One file per plot, each sorted so that the points of one line are adjacent.
for name, key in (("by_n", lambda r: (r["block_keys"], r["keys"])), ("by_k", lambda r: (r["keys"], r["block_keys"]))):
    with open(f"{sys.argv[2]}/{name}.dat", "w") as f:
        f.write("# N K keys_per_s p50_ms p99_ms\n")
        for r in sorted(rows, key=key):
            f.write(f'{r["keys"]} {r["block_keys"]} {r["keys_per_s"]:.0f} {r["p50_ms"]:.3f} {r["p99_ms"]:.3f}\n')
print("| N | K | writes | changed keys/s | p50 | p99 | hashes/key | rows/key | disk B/live key | peak RSS | raw RocksDB rows/s, empty store | % of it | raw at N | % of it | hash ceiling keys/s | % of hash |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    mode = "pipelined" if r.get("pipelined_writes") else "inline"
    print(f'| {r["keys"]:,} | {r["block_keys"]:,} | {mode} | {r["keys_per_s"]:,.0f} | {r["p50_ms"]:.2f} ms | {r["p99_ms"]:.2f} ms | '
          f'{r["hashes_per_key"]:.1f} | {r["rows_per_key"]:.2f} | {r["disk_bytes_per_key"]:.0f} | {r["peak_rss_mb"]:.0f} MiB | '
          f'{r["raw_rocksdb_keys_per_s"]:,.0f} | {100 * r["keys_per_s"] / r["raw_rocksdb_keys_per_s"]:.0f} % | '
          f'{r["raw_rocksdb_at_n_keys_per_s"]:,.0f} | {100 * r["keys_per_s"] / r["raw_rocksdb_at_n_keys_per_s"]:.0f} % | '
          f'{r["hash_ceiling_keys_per_s"]:,.0f} | {100 * r["keys_per_s"] / r["hash_ceiling_keys_per_s"]:.0f} % |')
PY

gnuplot <<GP
set terminal pngcairo size 1100,450 font "sans,10"
set output "$out/performance.png"
set multiplot layout 1,2
set logscale x
set grid
set key top right
set title "changed keys/s against live keys N"
set xlabel "N (live keys)"
set ylabel "changed keys/s"
plot for [k in "1 100 10000 100000"] "$dat/by_n.dat" using 1:(\$2 == k ? \$3 : 1/0) with linespoints title "K = ".k
set title "p99 commit latency against changed keys per height K"
set xlabel "K (changed keys per height)"
set ylabel "p99 per height (ms)"
set logscale y
plot for [n in "100000 1000000 10000000"] "$dat/by_k.dat" using 2:(\$1 == n ? \$5 : 1/0) with linespoints title "N = ".n
unset multiplot
GP
echo "wrote $out/performance.png" >&2
