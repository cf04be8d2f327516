#!/usr/bin/env bash
# Sets everything up and runs the main job: installs the pinned torch/triton when none is importable,
# AOT-builds the ops in place, then runs both seed problems through them against PyTorch
# (on the GPU when there is one, else the CPU path at a reduced size).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch, triton" 2>/dev/null; then
  "$PYTHON" -m pip install -r requirements.txt
fi
# --no-build-isolation: build against the torch installed here; --no-deps: nothing to fetch
"$PYTHON" -m pip install --no-build-isolation --no-deps -e .
"$PYTHON" -m fusedops info | head -4
"$PYTHON" -m fusedops demo "$@"
