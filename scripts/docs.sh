#!/bin/sh
# scripts/docs.sh - generate the API reference from include/pantry.h's doc
# comments with Doxygen (Debian's doxygen package; installed with apt-get if
# missing, as scripts/setup.sh does). Writes $PANTRY_DOCS_DIR/html/index.html
# (default build/docs) and prints its path.
#
#   scripts/docs.sh                  PANTRY_DOCS_DIR=/tmp/api scripts/docs.sh
set -eu

cd "$(dirname "$0")/.."
OUT=${PANTRY_DOCS_DIR:-build/docs}

if ! command -v doxygen >/dev/null 2>&1; then
  if [ "${PANTRY_SKIP_INSTALL:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    echo "docs.sh: installing doxygen" >&2
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends doxygen
  else
    echo "docs.sh: doxygen not found; install it (Debian: apt-get install doxygen)" >&2
    exit 1
  fi
fi

mkdir -p "$OUT"
# The Doxyfile's settings, with the output directory of this run.
{ cat Doxyfile; echo "OUTPUT_DIRECTORY = $OUT"; } | doxygen - >"$OUT/doxygen.log" 2>&1 || {
  cat "$OUT/doxygen.log" >&2
  exit 1
}
grep -i "warning" "$OUT/doxygen.log" >&2 || true
echo "$OUT/html/index.html"
