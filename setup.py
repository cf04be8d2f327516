"""Build: AOT-compile the Triton kernels (aot/build.py), then link them into one torch extension.

    pip install --no-build-isolation -e .         # develop (needs torch + triton; no GPU, no CUDA toolkit)
    pip wheel --no-build-isolation --no-deps .    # a wheel whose users need torch only

FUSEDOPS_CUDA_ARCHS="80;86;89;90" chooses the archs (default: aot/spec.py DEFAULT_ARCHS).
FUSEDOPS_PREBUILT_AOT=DIR links the kernels `python -m aot.build --out DIR` compiled earlier (on another machine, with
another Triton, for another torch) instead of compiling them; their archs are DIR's. This build then needs no Triton.
DIR is absolute or relative to this source tree.
"""
import json
import os
import re
import sys
from pathlib import Path

from setuptools import setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).resolve().parent
PREBUILT_AOT = os.environ.get("FUSEDOPS_PREBUILT_AOT", "").strip()
# A relative DIR is taken from the source tree (pip runs setup.py there, not where it was called from).
AOT_OUT = (ROOT / PREBUILT_AOT).resolve() if PREBUILT_AOT else ROOT / "build" / "aot"
BASE_VERSION = re.search(r'"(.+)"', (ROOT / "fusedops" / "_version.py").read_text()).group(1)
TORCH_RELEASE = torch.__version__.split("+")[0]
TORCH_MAJOR_MINOR = ".".join(TORCH_RELEASE.split(".")[:2])
# The local version label says which torch (and CUDA) the binary was built against.
CUDA_TAG = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
VERSION = f"{BASE_VERSION}+torch{TORCH_MAJOR_MINOR}.{CUDA_TAG}"


def cuda_include_dirs():
    """cuda.h and the runtime headers c10/cuda includes, from the CUDA packages torch depends on;
    the pieces those lack (crt/) from the headers the Triton wheel carries. No CUDA toolkit needed."""
    needed = ("cuda.h", "cuda_runtime_api.h", "crt/host_defines.h")
    candidates = [Path(os.environ[e]) / "include" for e in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(e)]
    try:
        import nvidia
        for base in nvidia.__path__:
            candidates += sorted(Path(base).glob("cu*/include")) + [Path(base) / "cuda_runtime" / "include"]
    except ImportError:
        pass
    try:
        import triton
        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "include")
    except ImportError:
        pass
    candidates.append(Path("/usr/local/cuda/include"))
    dirs = []
    for header in needed:
        home = next((p for p in dirs if (p / header).exists()), None) or \
            next((p for p in candidates if (p / header).exists()), None)
        if home is None:
            raise SystemExit(f"fusedops: {header} not found; install torch's CUDA build and triton, or set CUDA_HOME")
        if home not in dirs:
            dirs.append(home)
    return [str(p) for p in dirs]


def check_shared_cxx_runtime(library):
    """Refuse a library that carries its own copy of the C++ standard library (a compiler that links libstdc++
    statically, or -static-libstdc++ in the flags) instead of the shared libstdc++.so.6 torch uses: streams and
    locales then cross between two copies, and torch formatting a number into a stream this library made crashes
    the process (a SIGSEGV in the first error message that prints a size)."""
    import shutil
    import subprocess
    if sys.platform != "linux" or shutil.which("readelf") is None:
        return
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    if "libstdc++.so" not in dynamic:
        raise SystemExit(f"fusedops: {library.name} does not load the shared libstdc++.so.6 that torch uses: the "
                         f"compiler ({os.environ.get('CXX', 'c++')}) linked a static copy of the C++ standard library "
                         f"into it, and the two copies crash the process when they meet. Build with a compiler that "
                         f"links libstdc++ dynamically, e.g. CXX=g++ (the system's), and without -static-libstdc++.")


class BuildWithKernels(BuildExtension):
    def run(self):
        sys.path.insert(0, str(ROOT))
        from aot import build as aot_build, spec

        if PREBUILT_AOT:
            generated = aot_build.relink(AOT_OUT)
        else:
            generated = aot_build.build(AOT_OUT, ROOT / "build" / "aot-cache", os.cpu_count() or 1, spec.cuda_archs())
        archs = json.loads((AOT_OUT / "manifest.json").read_text())["archs"]
        for ext in self.extensions:
            if str(generated) not in ext.sources:
                ext.sources.append(str(generated))
        super().run()
        for ext in self.extensions:
            library = Path(self.get_ext_fullpath(ext.name))
            check_shared_cxx_runtime(library)
            info = library.with_name("_build_info.json")  # what the package checks before it loads the binary
            info.write_text(json.dumps({"version": VERSION, "torch": torch.__version__,
                                        "torch_cuda": torch.version.cuda, "archs": archs}) + "\n")


extension = CppExtension(
    "fusedops._C",
    sources=[str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc").glob("*.cpp"))],
    include_dirs=[str(ROOT / "csrc"), str(AOT_OUT), *cuda_include_dirs()],
    libraries=["c10_cuda"],
    extra_compile_args={"cxx": ["-O2", f'-DFUSEDOPS_VERSION="{VERSION}"',
                                f'-DFUSEDOPS_TORCH_VERSION="{torch.__version__}"']},
    # torch's libraries sit in site-packages/torch/lib, beside site-packages/fusedops.
    # -S: no debug sections (the kernel images dominate the size anyway).
    extra_link_args=["-Wl,-rpath,$ORIGIN/../torch/lib", "-Wl,-S"],
    depends=[str(p) for p in sorted((ROOT / "csrc").glob("*.h"))],
    py_limited_api=True,  # no libtorch_python: a C++ (libtorch) process can load the same .so
)

setup(
    name="fusedops",
    version=VERSION,
    description="Fused Linear+epilogue GPU ops, AOT-compiled from Triton; no Triton at run time",
    packages=["fusedops"],
    package_data={"fusedops": ["_build_info.json"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildWithKernels},
    install_requires=[f"torch=={TORCH_MAJOR_MINOR}.*"],
    # torch.compile(model, backend="fusedops") finds the backend here, without an import of fusedops
    entry_points={"torch_dynamo_backends": ["fusedops = fusedops.backend:compile_backend"]},
    python_requires=">=3.9",
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
