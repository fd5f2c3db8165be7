#!/usr/bin/env bash
# scripts/setup.sh - set up a Debian machine for pantry and build it.
#
# 1. Installs the Debian packages pantry needs that are missing (checked one by
#    one with dpkg -s; apt-get update runs only when something is missing;
#    sudo is used only when not root). PANTRY_SKIP_INSTALL=1 skips this step.
# 2. Configures and builds:
#      cmake -S . -B "$PANTRY_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release $PANTRY_CMAKE_ARGS
#      cmake --build "$PANTRY_BUILD_DIR" -j"$(nproc)"
#    PANTRY_BUILD_DIR defaults to build; PANTRY_CMAKE_ARGS (split on spaces)
#    comes last, so it may override the build type.
#    PANTRY_SETUP_ONLY_INSTALL=1 stops after step 1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(
  cmake gcc g++ make pkg-config       # the build
  liburcu-dev catch2                  # the library's and the tests' dependencies
  clang libclang-rt-14-dev            # sanitizer builds (scripts/test.sh)
  python3 git                         # tests that run real programs under LD_PRELOAD
  libjemalloc2 libtcmalloc-minimal4 libmimalloc2.0 # peer allocators for bench/
  libtalloc-dev libapr1-dev           # peer pool/arena libraries for bench/
  gnuplot-nox                         # the benchmark plot
)

log() { printf 'setup: %s\n' "$*" >&2; }

install_missing() {
  if ! command -v dpkg >/dev/null 2>&1; then
    log "no dpkg: not a Debian system; install by hand: ${PACKAGES[*]}"
    return 0
  fi
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "all ${#PACKAGES[@]} Debian packages are installed"
    return 0
  fi
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      log "missing packages (${missing[*]}) and not root, and no sudo: install them and rerun"
      return 1
    fi
    sudo=(sudo)
  fi
  log "installing: ${missing[*]}"
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
}

if [ "${PANTRY_SKIP_INSTALL:-0}" != 1 ]; then
  install_missing
fi
if [ "${PANTRY_SETUP_ONLY_INSTALL:-0}" = 1 ]; then
  exit 0
fi

BUILD_DIR=${PANTRY_BUILD_DIR:-build}
# Word splitting of PANTRY_CMAKE_ARGS is intended: "-DA=1 -DB=2".
read -r -a EXTRA <<<"${PANTRY_CMAKE_ARGS:-}"
JOBS=$(nproc 2>/dev/null || echo 2)

log "configuring $BUILD_DIR ${EXTRA[*]:-}"
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "${EXTRA[@]}"
log "building $BUILD_DIR with $JOBS jobs"
cmake --build "$BUILD_DIR" -j"$JOBS"
