#!/usr/bin/env bash
# scripts/test.sh - the README's test command: set up, build and run the test
# suite, in stages:
#   release  scripts/setup.sh into build/ (Release), ctest there
#   asan     clang, PANTRY_SANITIZE=address,undefined into build-asan/
#   tsan     clang, PANTRY_SANITIZE=thread into build-tsan/ (with the
#            suppressions of tests/tsan.supp for liburcu's own calls)
#   fuzz     clang, PANTRY_BUILD_FUZZ=ON into build-fuzz/: the libFuzzer
#            target fuzz/pantry_fuzz (ASan+UBSan) runs for a bounded time
#            on the corpus it keeps in build-fuzz/fuzz/corpus; a crash
#            leaves its input in build-fuzz/fuzz/ (crash-*)
# The sanitizer stages skip the LD_PRELOAD tests (label `preload`): preloading
# an allocator into a sanitized process makes no sense.
#
# Environment:
#   PANTRY_TEST_STAGES   stages to run (default "release asan tsan fuzz")
#   PANTRY_TEST_JOBS     ctest -j (default 2)
#   PANTRY_TEST_TIMEOUT  seconds per test (default 900; the tests also carry
#                        their own TIMEOUT property, PANTRY_TEST_TIMEOUT in CMake)
#   PANTRY_BUILD_DIR     build directory of the release stage (default build)
#   PANTRY_ASAN_BUILD_DIR, PANTRY_TSAN_BUILD_DIR, PANTRY_FUZZ_BUILD_DIR
#                        (default build-asan, build-tsan, build-fuzz)
#   PANTRY_FUZZ_SECONDS  how long the fuzz stage fuzzes (default 120)
#   PANTRY_CMAKE_ARGS    extra cmake arguments for every stage
#   PANTRY_TEST_THREADS, PANTRY_TEST_SCALE   size the stress tests (tests/)
#   CTEST_ARGS           extra ctest arguments (for example "-R threads")
# Prints one summary line per stage; exits non-zero if any stage failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

STAGES=${PANTRY_TEST_STAGES:-release asan tsan fuzz}
JOBS=${PANTRY_TEST_JOBS:-2}
TIMEOUT=${PANTRY_TEST_TIMEOUT:-900}
USER_CMAKE_ARGS=${PANTRY_CMAKE_ARGS:-}
read -r -a USER_CTEST_ARGS <<<"${CTEST_ARGS:-}"

log() { printf 'test: %s\n' "$*" >&2; }

# Install what is missing once; each stage below only configures and builds.
PANTRY_SETUP_ONLY_INSTALL=1 scripts/setup.sh

SUMMARY=()
FAILED=0

# run_stage NAME BUILD_DIR "CMAKE ARGS" [ctest args...]
run_stage() {
  local name=$1 dir=$2 cmake_args=$3
  shift 3
  local logfile="$dir/ctest-$name.log"
  log "=== stage $name: building $dir"
  if ! PANTRY_SKIP_INSTALL=1 PANTRY_BUILD_DIR="$dir" \
    PANTRY_CMAKE_ARGS="$cmake_args $USER_CMAKE_ARGS" scripts/setup.sh; then
    SUMMARY+=("stage $name: FAIL (build failed)")
    return 1
  fi
  log "=== stage $name: ctest in $dir"
  local rc=0
  ctest --test-dir "$dir" --output-on-failure -j"$JOBS" --timeout "$TIMEOUT" \
    "$@" "${USER_CTEST_ARGS[@]}" 2>&1 | tee "$logfile" || rc=$? # pipefail: ctest's status
  local result
  result=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$logfile" | tail -n 1 || true)
  [ -n "$result" ] || result="no test summary from ctest"
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("stage $name: PASS ($result)")
    return 0
  fi
  local failed
  failed=$(sed -n '/The following tests FAILED:/,$p' "$logfile" | grep -E '^[[:space:]]+[0-9]+ - ' |
    sed -E 's/^[[:space:]]+[0-9]+ - //; s/ \((Failed|Timeout|Subprocess aborted|SEGFAULT|Child aborted|Exception)\)$//' |
    paste -sd '|' - | sed 's/|/ | /g' || true)
  SUMMARY+=("stage $name: FAIL ($result${failed:+; failed: $failed})")
  return 1
}

# run_fuzz_stage BUILD_DIR: build the libFuzzer target, fuzz for
# PANTRY_FUZZ_SECONDS; fails on a crash, a leak or a model violation.
run_fuzz_stage() {
  local dir=$1 seconds=${PANTRY_FUZZ_SECONDS:-120}
  local logfile="$dir/fuzz.log" corpus="$dir/fuzz/corpus"
  log "=== stage fuzz: building $dir"
  if ! PANTRY_SKIP_INSTALL=1 PANTRY_BUILD_DIR="$dir" \
    PANTRY_CMAKE_ARGS="$SAN_COMMON -DPANTRY_BUILD_FUZZ=ON -DPANTRY_BUILD_TESTS=OFF $USER_CMAKE_ARGS" \
    scripts/setup.sh; then
    SUMMARY+=("stage fuzz: FAIL (build failed)")
    return 1
  fi
  mkdir -p "$corpus"
  log "=== stage fuzz: $dir/fuzz/pantry_fuzz for $seconds s"
  local rc=0
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
    "$dir/fuzz/pantry_fuzz" -max_total_time="$seconds" -max_len=4096 -timeout=60 \
    -rss_limit_mb=4096 -print_final_stats=1 -artifact_prefix="$dir/fuzz/" "$corpus" \
    >"$logfile" 2>&1 || rc=$?
  tail -n 25 "$logfile"
  local result
  result=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$logfile" | tail -n 1 || true)
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("stage fuzz: PASS (${result:-no summary}; corpus $(find "$corpus" -type f | wc -l) inputs)")
    return 0
  fi
  local crash
  crash=$(grep -oE "Test unit written to [^ ]+" "$logfile" | tail -n 1 || true)
  SUMMARY+=("stage fuzz: FAIL (exit $rc${crash:+; $crash}; see $logfile)")
  return 1
}

SAN_COMMON="-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPANTRY_BUILD_BENCH=OFF"

for stage in $STAGES; do
  case $stage in
  release)
    run_stage release "${PANTRY_BUILD_DIR:-build}" "" || FAILED=1
    ;;
  asan)
    ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1} \
      run_stage asan "${PANTRY_ASAN_BUILD_DIR:-build-asan}" "$SAN_COMMON -DPANTRY_SANITIZE=address,undefined" -LE preload ||
      FAILED=1
    ;;
  tsan)
    # die_after_fork=0: the death, fork and OOM tests fork a process in which
    # liburcu's call_rcu thread (and pantry's workers) run; liburcu's fork
    # handlers restart that thread in the child, and some children start a
    # thread of their own. ThreadSanitizer would otherwise kill every such
    # child (the tests' own time bounds catch a child that hangs).
    TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:suppressions=$PWD/tests/tsan.supp} \
      run_stage tsan "${PANTRY_TSAN_BUILD_DIR:-build-tsan}" "$SAN_COMMON -DPANTRY_SANITIZE=thread" -LE preload || FAILED=1
    ;;
  fuzz)
    run_fuzz_stage "${PANTRY_FUZZ_BUILD_DIR:-build-fuzz}" || FAILED=1
    ;;
  *)
    SUMMARY+=("stage $stage: FAIL (unknown stage; known: release asan tsan fuzz)")
    FAILED=1
    ;;
  esac
done

printf '\n'
for line in "${SUMMARY[@]}"; do
  printf '%s\n' "$line"
done
exit "$FAILED"
