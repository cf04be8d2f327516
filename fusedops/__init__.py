"""fusedops: fused Linear + epilogue ops for PyTorch, AOT-compiled from Triton (no Triton at run time).

    import fusedops
    y = torch.ops.fusedops.linear_bn_gelu_relu(x, w, b, mean, var, gamma, beta, 1e-5)
"""
import json
from pathlib import Path

import torch

from ._version import __version__

_HERE = Path(__file__).resolve().parent


def _library_path():
    found = sorted(_HERE.glob("_C*.so"))
    if not found:
        raise ImportError("fusedops: the compiled library (fusedops/_C*.so) is missing; build it with "
                          "`pip install --no-build-isolation -e .`")
    return found[0]


def _check_torch_version():
    """Refuse, with the reason, a torch other than the one the binary was built against."""
    info_path = _HERE / "_build_info.json"
    if not info_path.exists():
        return
    built = json.loads(info_path.read_text())["torch"]
    running = torch.__version__

    def major_minor(v):
        return tuple(v.split("+")[0].split(".")[:2])

    if major_minor(built) != major_minor(running):
        raise ImportError(f"fusedops was built against torch {built} but torch {running} is installed; "
                          f"install torch {'.'.join(major_minor(built))}.x or rebuild fusedops against this torch")


_check_torch_version()
library_path = str(_library_path())
torch.ops.load_library(library_path)

from ._ops import linear_bn_gelu_relu, linear_relu, build_info  # noqa: E402
from . import nn  # noqa: E402
from .fusion import fuse  # noqa: E402

__all__ = ["linear_bn_gelu_relu", "linear_relu", "build_info", "fuse", "nn", "library_path", "__version__"]
