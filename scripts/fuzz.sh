#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz in build-fuzz (clang, AddressSanitizer with
# leak detection, UndefinedBehaviorSanitizer) and runs them one after another, each for
# SECONDS (default 30) from a fresh corpus seeded with the shipped data:
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]     TARGET: block_parser blk_reader
#                                               change_line proof_json rpc_request
#
# Prints one line per target: executions, exec/s, coverage (libFuzzer's cov: and ft:),
# corpus size, and the result. Exits 1 if any target found a crash, a leak, a hang
# (an input running over 10 s), running out of memory (2 GB) or a sanitizer report; the
# input that did it is kept in build-fuzz/artifacts/TARGET/ and the output in
# build-fuzz/fuzz-logs/TARGET.log. Reproduce with build-fuzz/fuzz/fuzz_TARGET FILE.
#
# Needs clang 19 and its runtime libraries (Debian: clang-19 libclang-rt-19-dev), which
# scripts/setup.sh installs; CXX=... picks another clang.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
if [ $# -gt 0 ]; then
  seconds=$1
  shift
fi
[[ "$seconds" =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2; }
all=(block_parser blk_reader change_line proof_json rpc_request)
targets=("${all[@]}")
[ $# -gt 0 ] && targets=("$@")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target $t (one of: ${all[*]})" >&2; exit 2; }
done

cxx=${CXX:-clang++-19}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (apt-get install clang-19 libclang-rt-19-dev)" >&2; exit 2; }
build=build-fuzz
start=$(date +%s)

mkdir -p "$build"
echo "fuzz: $("$cxx" --version | head -1)"
echo "fuzz: configuring and building $build (log: $build/build.log)"
{
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$(command -v "$cxx")" \
    -DSTATEROOT_FUZZ=ON -DSTATEROOT_SANITIZE=address,undefined,fuzzer-no-link \
    -DCMAKE_CXX_FLAGS=-fno-sanitize-recover=all &&
    cmake --build "$build" -j "$(nproc)" --target fuzz_targets
} >"$build/build.log" 2>&1 || { tail -n 40 "$build/build.log" >&2; echo "fuzz: build failed" >&2; exit 2; }
echo "fuzz: built in $(($(date +%s) - start)) s; $seconds s per target"

# Per target: the longest input libFuzzer may make, and a dictionary for the JSON formats.
# Proofs go to 20000 bytes so that a proof past the 256-side-node limit can be written.
declare -A max_len=([block_parser]=8192 [blk_reader]=16384 [change_line]=4096 [proof_json]=20000 [rpc_request]=8192)
declare -A dict=([change_line]=1 [proof_json]=1 [rpc_request]=1)

export ASAN_OPTIONS=detect_leaks=1:symbolize=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
failed=0
printf '%-14s %11s %8s %6s %7s %7s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t" artifacts="$build/artifacts/$t" log="$build/fuzz-logs/$t.log"
  scratch="$PWD/$build/tmp/$t"
  rm -rf "$corpus" "$artifacts" "$scratch"
  mkdir -p "$corpus" "$artifacts/" "$scratch" "$(dirname "$log")"
  python3 tests/fuzz/make_seeds.py "$t" "$corpus"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 -max_len="${max_len[$t]}"
        -print_final_stats=1 -artifact_prefix="$artifacts/")
  [ -n "${dict[$t]:-}" ] && args+=(-dict=tests/fuzz/json.dict)
  rc=0
  # The targets' scratch files (blk files, a small database) go under build-fuzz/tmp.
  TMPDIR="$scratch" "$build/fuzz/fuzz_$t" "${args[@]}" "$corpus" >"$log" 2>&1 || rc=$?

  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  stats=$(grep -E '^#[0-9]+' "$log" | grep -E 'cov: ' | tail -1 || true)
  field() { sed -n "s|.* $1: *\([0-9]*\).*|\1|p" <<<"$stats"; }
  runs=${runs:-$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$stats")}
  corp=$(sed -n 's/.* corp: *\([0-9]*\)\/.*/\1/p' <<<"$stats")
  rate=$(field exec/s)
  artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  result=ok
  if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|ERROR: libFuzzer|runtime error:|fuzz check failed' "$log"; then
    kind=crash
    grep -q 'terminate called after throwing' "$log" && kind=uncaught-exception
    grep -q 'ERROR: libFuzzer: timeout' "$log" && kind=timeout
    grep -q 'ERROR: libFuzzer: out-of-memory' "$log" && kind=out-of-memory
    grep -q 'ERROR: LeakSanitizer' "$log" && kind=leak
    grep -q 'ERROR: AddressSanitizer' "$log" && kind=address-sanitizer
    grep -q 'runtime error:' "$log" && kind=undefined-behaviour
    grep -q 'fuzz check failed' "$log" && kind=check-failed
    result="$kind: ${artifact:-no artifact} (exit $rc, log $log)"
    failed=1
  fi
  printf '%-14s %11s %8s %6s %7s %7s  %s\n' "$t" "${runs:-?}" "${rate:-?}" "$(field cov)" "$(field ft)" \
    "${corp:-?}" "$result"
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit "$failed"
