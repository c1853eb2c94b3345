#!/usr/bin/env bash
# Installs the dependencies, then builds and runs the tests in stages:
#   plain  every test, optimised build (build/)
#   asan   every test under AddressSanitizer (leaks included) and
#          UndefinedBehaviorSanitizer (build-asan/)
#   tsan   the concurrent server and indexer tests under ThreadSanitizer (build-tsan/):
#          the query server, and `stateroot index` serving while it indexes
#   crash  scripts/crash-test.sh, a short run
#   fuzz   every fuzz target for 10 s (scripts/fuzz.sh)
# With no argument it runs them all, as CI does; `./scripts/test.sh plain` runs one.
set -euo pipefail
cd "$(dirname "$0")/.."

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(plain asan tsan crash fuzz)
jobs=$(nproc)

./scripts/setup.sh
# Ninja for new build trees (an existing tree keeps its generator): it starts compiling
# a target's sources before the libraries it links are built, so both cores stay busy.
export CMAKE_GENERATOR=${CMAKE_GENERATOR:-Ninja}
# As root (CI), the disk-full test must mount its tmpfs rather than skip.
[ "$(id -u)" -eq 0 ] && export STATEROOT_REQUIRE_MOUNT=1

for stage in "${stages[@]}"; do
  start=$SECONDS
  echo "== test stage: $stage"
  case "$stage" in
    plain)
      # Line tables only (-g1): enough for backtraces and profiles, a fifth less to build.
      cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
      cmake --build build -j "$jobs"
      ctest --test-dir build --output-on-failure -j "$jobs"
      ;;
    asan)
      # Warnings are the plain build's business: GCC's flow warnings misfire on
      # sanitizer-instrumented code (e.g. -Wmaybe-uninitialized inside <regex>).
      cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
        -DSTATEROOT_SANITIZE=address,undefined -DSTATEROOT_WERROR=OFF
      cmake --build build-asan -j "$jobs"
      ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1 \
        UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --test-dir build-asan --output-on-failure -j "$jobs"
      ;;
    tsan)
      # -O1 like asan: a third less to build than -O2, and the races are the same.
      cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
        -DSTATEROOT_SANITIZE=thread -DSTATEROOT_WERROR=OFF -DSTATEROOT_TEST_TIMEOUT=300
      cmake --build build-tsan -j "$jobs" --target stateroot server_tests index_cli_tests
      # See tests/sanitizers/tsan.supp for why uninstrumented libraries are ignored. A test
      # that times out is run once more (docs/reliability.md: one unexplained stall).
      TSAN_OPTIONS="halt_on_error=1 ignore_noninstrumented_modules=1 suppressions='$PWD/tests/sanitizers/tsan.supp'" \
        ctest --test-dir build-tsan --output-on-failure -j "$jobs" --repeat after-timeout:2 \
        -R '^(server|http|config|index cli):'
      ;;
    crash)
      KILLS=8 ./scripts/crash-test.sh
      ;;
    fuzz)
      ./scripts/fuzz.sh 10
      ;;
    *)
      echo "unknown stage \"$stage\" (plain, asan, tsan, crash, fuzz)" >&2
      exit 2
      ;;
  esac
  echo "== test stage $stage passed in $((SECONDS - start)) s"
done
