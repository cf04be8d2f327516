#!/usr/bin/env bash
# Sets everything up and runs the main job: installs the pinned torch/triton when none is importable (and the test
# command's pytest / numpy when missing), AOT-builds the kernels (printing each variant as it compiles), links the ops
# in place, then runs both seed problems through them against PyTorch (on the GPU when there is one, else the CPU
# reference path at a reduced size). PYTHON=/path/to/python picks the interpreter (default: python3 on PATH).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
echo "run.sh: using $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
if ! "$PYTHON" -c "import torch, triton" 2>/dev/null; then
  "$PYTHON" -m pip install -r requirements.txt
elif ! "$PYTHON" -c "import pytest, numpy" 2>/dev/null; then
  "$PYTHON" -m pip install pytest numpy
fi
# The kernels first, with their progress ([n/N] per variant; a rebuild takes them from build/aot-cache), so that the
# package build below finds every one cached and only compiles the C++ (pip shows no progress of its own).
echo "run.sh: compiling the kernels (about 1-2 minutes on 2 cores the first time)"
"$PYTHON" -m aot.build --out build/aot --cache build/aot-cache
# --no-build-isolation: build against the torch installed here; --no-deps: nothing to fetch
echo "run.sh: building the extension"
"$PYTHON" -m pip install --no-build-isolation --no-deps -e .
"$PYTHON" -m fusedops info | head -4
"$PYTHON" -m fusedops demo "$@"
