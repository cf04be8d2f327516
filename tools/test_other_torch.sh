#!/usr/bin/env bash
# Builds this checkout's extension against another torch release in a fresh venv, from the kernels already in
# build/aot (no Triton there), and runs the CPU tests that lean on torch's own APIs: the ops and opcheck, export and
# TorchScript, fuse(model) and the torch.compile backend, whose patterns follow torch's decompositions and Inductor's
# graph passes, which change between releases. CI runs it for the GPU machine's torch.
#   bash tools/test_other_torch.sh 2.11          # any release the package index has (2.10 and later)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RELEASE="${1:?usage: tools/test_other_torch.sh TORCH_RELEASE (e.g. 2.11)}"
PYTHON="${PYTHON:-python3}"
[ -f "$ROOT/build/aot/manifest.json" ] || {
  echo "tools/test_other_torch.sh: no kernels in build/aot; build them first (pip install --no-build-isolation -e .)"
  exit 2
}
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/src/build"
# the checkout as it stands (tracked and new files, not ignored ones), with its compiled kernels
git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && tar --null -T - -cf -) \
  | tar -xf - -C "$WORK/src"
cp -r "$ROOT/build/aot" "$WORK/src/build/aot"
"$PYTHON" -m venv "$WORK/venv"
VENV_PY="$WORK/venv/bin/python"
"$VENV_PY" -m pip install -q --disable-pip-version-check "torch==$RELEASE.*" numpy pytest setuptools wheel 2>&1 \
  | { grep -v "^WARNING: Location" || true; }  # (the package mirror's notes on absent indexes)
"$VENV_PY" -c "import torch; print('tools/test_other_torch.sh: torch', torch.__version__)"
cd "$WORK/src"
FUSEDOPS_PREBUILT_AOT=build/aot "$VENV_PY" -m pip install -q --disable-pip-version-check --no-build-isolation \
  --no-deps -e .
"$VENV_PY" -m pytest -q -p no:cacheprovider tests/test_ops_cpu.py tests/test_export.py tests/test_fuse.py \
  tests/test_compile_backend.py
