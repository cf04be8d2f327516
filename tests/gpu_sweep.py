"""A small sweep of odd shapes through every op and precision; run under compute-sanitizer by
test_gpu.py (with PYTORCH_NO_CUDA_MEMORY_CACHING=1 each tensor is its own allocation, so an
out-of-bounds access is caught at the tensor's edge)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fusedops  # noqa: E402,F401
from fusedops.reference import make_problem, reference, rel_err, run_fused  # noqa: E402

SHAPES = [((1,), 1, 1), ((3,), 17, 5), ((17,), 33, 100), ((65,), 129, 48), ((2, 7), 16, 31), ((130,), 64, 64),
          # ragged M, N and K tiles in the big-M rules: on sm_90 the persistent TMA and Gluon kernels (device-side
          # tensor descriptors, warp-specialised partitions), on sm_89 the tiled kernel's big tiles
          ((1000,), 2064, 1040)]
CASES = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float32, "fp16"), (torch.float16, None),
         (torch.bfloat16, None)]

for op in ("linear_relu", "linear_bn_gelu_relu"):
    for dtype, precision in CASES:
        for m_shape, n, k in SHAPES:
            p = make_problem(m_shape, n, k, dtype, device="cuda")
            kw = {} if precision is None else {"precision": precision}
            out = run_fused(op, p, **kw)
            ref = reference(op, p)
            if ref.norm() > 0 and rel_err(out, ref) > 1e-2:
                raise SystemExit(f"wrong result: {op} {dtype} {precision} {m_shape} {n} {k}")
            print(m_shape, n, k, torch.ops.fusedops._last_launch())  # which variant ran under the sanitizer
torch.cuda.synchronize()
print("sweep ok")
