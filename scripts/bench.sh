#!/bin/sh
# scripts/bench.sh - install what the benchmarks need, build, run bench/run.
#
#   scripts/bench.sh [bench/run options]     e.g. scripts/bench.sh --reps 3 --threads 1,2
#
# Environment: BUILD_DIR (default build), SKIP_APT=1 to skip the package step.
set -eu

cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

PACKAGES="cmake gcc g++ liburcu-dev catch2 libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0
libtalloc-dev libapr1-dev python3 gnuplot-nox pkg-config wrk"

# (a) packages: install only what dpkg says is missing
if [ "${SKIP_APT:-0}" != 1 ] && command -v dpkg >/dev/null 2>&1; then
  missing=""
  for p in $PACKAGES; do
    dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
  done
  if [ -n "$missing" ]; then
    echo "bench.sh: installing:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update
    # shellcheck disable=SC2086 # word splitting of the list is intended
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
  fi
fi

# (b) build (Release; the bench target needs PANTRY_BUILD_BENCH)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DPANTRY_BUILD_BENCH=ON
cmake --build "$BUILD_DIR" -j

# (c) run
exec python3 bench/run --bench "$BUILD_DIR/pantry_bench" \
  --pantry "$BUILD_DIR/libpantry-malloc.so" \
  --json "$BUILD_DIR/bench-results.json" --csv "$BUILD_DIR/bench-results.csv" "$@"
