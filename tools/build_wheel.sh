#!/usr/bin/env bash
# Build the fusedops wheel into dist/ (or $1), against the torch (and triton, build time only) of the
# python on PATH (or $PYTHON). The AOT kernel compile is cached in build/aot-cache, so a rebuild is
# mostly the C++ compile. tests/test_deploy.py uses this wheel when it is newer than the sources
# (or FUSEDOPS_WHEEL=path/to/wheel), else it builds its own into a temporary directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/dist}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
rm -f "$OUT"/fusedops-*.whl
"$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-index -w "$OUT" "$ROOT"
for wheel in "$OUT"/fusedops-*.whl; do
  echo "$wheel: $(du -h "$wheel" | cut -f1)"
done
