"""Shared by the deployment tests: subprocesses in which `import triton` fails, the wheel (found or
built), and the C++ client (built with CMake, cached under build/)."""
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
CPP_EXAMPLE = REPO / "examples" / "cpp"

# Installed first thing in a subprocess: a meta-path finder that makes `import triton` (and any
# triton.* submodule) fail as if Triton were not installed.
BLOCK_TRITON = textwrap.dedent('''\
    import sys as _sys
    from importlib.machinery import PathFinder as _PathFinder

    class _PathFinderWithoutTriton(_PathFinder):
        """sys.path lookups as usual, except that Triton is not there: `import triton` raises
        ModuleNotFoundError and importlib.util.find_spec("triton") is None, exactly as where Triton is
        not installed (torch's CUDA init asks find_spec, so a finder that raised would break it)."""

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                return None
            return super().find_spec(name, path, target)

    _sys.meta_path[:] = [_PathFinderWithoutTriton if f is _PathFinder else f for f in _sys.meta_path]
    for _name in [n for n in _sys.modules if n == "triton" or n.startswith("triton.")]:
        del _sys.modules[_name]
    ''')

# Appended to a subprocess's code: proof that the blocker held.
ASSERT_NO_TRITON = textwrap.dedent('''
    import sys as _sys
    try:
        import triton as _triton
    except ImportError:
        pass
    else:
        raise SystemExit("the triton blocker did not hold: " + repr(_triton))
    assert _sys.modules.get("triton") is None, "triton got imported"
    ''')


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
    env.update(extra)
    return env


def run_python(code, *, cwd, python=sys.executable, block_triton=True, timeout=300, in_place=False):
    """python -c CODE in cwd. Keep cwd outside the repository: then fusedops can come only from an
    installed package, or, with in_place, from this checkout (PYTHONPATH)."""
    if block_triton:
        code = BLOCK_TRITON + "\n" + code
    env = clean_env(**({"PYTHONPATH": str(REPO)} if in_place else {}))
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def run_script(script, *args, cwd, python=sys.executable, block_triton=True, timeout=300, in_place=False):
    """A script with the triton blocker installed before it starts; sys.path[0] is its folder."""
    code = (f"import runpy, sys\nsys.argv = {[str(script), *map(str, args)]!r}\n"
            f"sys.path.insert(0, {str(Path(script).parent)!r})\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return run_python(code, cwd=cwd, python=python, block_triton=block_triton, timeout=timeout, in_place=in_place)


def check(proc, what="subprocess"):
    assert proc.returncode == 0, (f"{what} failed with exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                                  f"--- stderr\n{proc.stderr}")
    return proc.stdout


# --- the wheel ----------------------------------------------------------------------------------

TORCH_MAJOR_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])


def expected_version():
    """The version setup.py gives a build against this torch: <base>+torch<major>.<minor>.<cuda tag>."""
    from fusedops._version import __version__
    cuda = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    return f"{__version__}+torch{TORCH_MAJOR_MINOR}.{cuda}"


def newest_source_mtime():
    patterns = ["setup.py", "pyproject.toml", "csrc/*", "kernels/*.py", "aot/*.py", "aot/tuning/*",
                "fusedops/*.py"]
    return max(p.stat().st_mtime for pattern in patterns for p in REPO.glob(pattern) if p.is_file())


def find_or_build_wheel(tmp_dir):
    """$FUSEDOPS_WHEEL, else dist/fusedops-<version>-*.whl if newer than every source file
    (tools/build_wheel.sh makes it), else a fresh build into tmp_dir (about a minute)."""
    if os.environ.get("FUSEDOPS_WHEEL"):
        wheel = Path(os.environ["FUSEDOPS_WHEEL"])
        assert wheel.is_file(), f"FUSEDOPS_WHEEL={wheel} does not exist"
        return wheel
    pattern = f"fusedops-{expected_version()}-*.whl"
    built = sorted(REPO.glob(f"dist/{pattern}"), key=lambda p: p.stat().st_mtime)
    if built and built[-1].stat().st_mtime >= newest_source_mtime():
        return built[-1]
    out = Path(tmp_dir)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                           "-w", str(out), str(REPO)], capture_output=True, text=True, timeout=1800)
    check(proc, "pip wheel")
    wheels = sorted(out.glob(pattern))
    assert len(wheels) == 1, f"expected one {pattern} in {out}, found {[w.name for w in out.iterdir()]}"
    return wheels[0]


class Venv:
    """A virtual environment that sees the system's torch (--system-site-packages: torch is several GB)
    with the wheel installed into it, and with `import triton` blocked in every interpreter it starts
    (a .pth file), as in an environment without Triton."""

    def __init__(self, root, wheel):
        self.root = Path(root)
        self.wheel = Path(wheel)
        check(subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(self.root)],
                             capture_output=True, text=True, timeout=300), "python -m venv")
        self.python = self.root / "bin" / "python"
        self.site = Path(check(self.run("import sysconfig; print(sysconfig.get_paths()['platlib'])",
                                        block_triton=True)).strip())
        # When this interpreter is itself a venv (as on the GPU machine), --system-site-packages shows the
        # base interpreter's packages, not ours: add our site-packages as plain path lines (no .pth hooks
        # of theirs run, so an editable fusedops there stays invisible).
        (self.site / "_fusedops_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        # pip from the system site-packages installs into the venv (sys.prefix); --ignore-installed:
        # the system's editable fusedops must not count as "already satisfied".
        check(subprocess.run([str(self.python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                              "--disable-pip-version-check", str(self.wheel)],
                             capture_output=True, text=True, timeout=600, cwd=self.root, env=clean_env()),
              "pip install")
        (self.site / "_fusedops_no_triton.py").write_text(BLOCK_TRITON)
        (self.site / "_fusedops_no_triton.pth").write_text("import _fusedops_no_triton\n")

    def run(self, code, *, cwd=None, block_triton=False, timeout=300):
        # block_triton=False: the venv's .pth does it (once the constructor has written it).
        return run_python(code, cwd=cwd or self.root, python=self.python, block_triton=block_triton, timeout=timeout)

    def run_module(self, *args, cwd=None, timeout=300):
        return subprocess.run([str(self.python), "-m", *args], cwd=cwd or self.root, capture_output=True, text=True,
                              timeout=timeout, env=clean_env())

    @property
    def package(self):
        return self.site / "fusedops"

    def library(self):
        found = sorted(self.package.glob("_C*.so"))
        assert len(found) == 1, found
        return found[0]


# --- the C++ client -----------------------------------------------------------------------------

def build_cpp_client(build_dir):
    """Configures and builds examples/cpp into build_dir: a folder of the tests' own, never the build/cpp-client that
    examples/cpp/README.md gives users (CMake caches the libtorch it first found there)."""
    if shutil.which("cmake") is None or not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("the C++ client needs cmake and a C++ compiler")
    configure = ["cmake", "-S", str(CPP_EXAMPLE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    check(subprocess.run(configure, capture_output=True, text=True, timeout=600), "cmake configure")
    check(subprocess.run(["cmake", "--build", str(build_dir), "--parallel", str(os.cpu_count() or 1)],
                         capture_output=True, text=True, timeout=1200), "cmake --build")
    client = Path(build_dir) / "fusedops_client"
    assert client.is_file()
    return client


def client_input(shape):
    """The input the C++ client makes: sin(0.37 * i), i = 0, 1, ... in row-major order, float32."""
    numel = 1
    for d in shape:
        numel *= d
    return (torch.arange(numel, dtype=torch.float32) * 0.37).sin().reshape(shape)


def run_cpp_client(client, library, model, shape, device="cpu"):
    proc = subprocess.run([str(client), str(library), str(model), *map(str, shape), "--device", device],
                          capture_output=True, text=True, timeout=300, env=clean_env())
    out = check(proc, "fusedops_client")
    fields = dict(line.split(" ", 1) for line in out.strip().splitlines())
    return {"device": fields["device"], "shape": tuple(int(d) for d in fields["shape"].split()),
            "sum": float(fields["sum"]), "abs_sum": float(fields["abs_sum"])}


def scripted(module):
    """torch.jit.script, without its deprecation warning (TorchScript is deprecated in favour of export)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(module)



# --- a model using the ops every way a deployed model can -----------------------------------------

class DeployModel(torch.nn.Module):
    """fusedops.nn modules (default precision and precision="tf32") and direct torch.ops calls
    (default and .precision overloads). Output of both signs, so abs-sum and sum differ."""

    def __init__(self, k: int = 16, hidden: int = 32, n: int = 8):
        super().__init__()
        from fusedops.nn import LinearBNGeluReLU, LinearReLU
        self.n = n
        self.block = LinearBNGeluReLU(k, hidden, eps=1e-3)
        self.head = LinearReLU(hidden, n, precision="tf32")
        self.plain = LinearReLU(hidden, n, bias=False)
        self.skip = torch.nn.Linear(k, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(x)
        y = self.head(h) - self.plain(h)
        y = y + torch.ops.fusedops.linear_relu(x, self.skip.weight, self.skip.bias, precision="ieee")
        bn = self.block.batch_norm
        z = torch.ops.fusedops.linear_bn_gelu_relu(x, self.block.gemm.weight, None, bn.running_mean, bn.running_var,
                                                   None, None, 1e-3)
        return y - 0.5 * z[..., : self.n]


def make_deploy_model(seed=0, **sizes):
    """A DeployModel in eval mode, with BatchNorm running statistics away from 0 / 1."""
    torch.manual_seed(seed)
    model = DeployModel(**sizes)
    bn = model.block.batch_norm
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.normal_(1, 0.2)
        bn.bias.normal_(0, 0.1)
    return model.eval()


def eager_reference(model, x):
    """What the model computes, from PyTorch composites only (no fusedops ops): fusedops.reference's, in x's dtype."""
    from fusedops.reference import reference

    def fused(x, w, b, bn=None, eps=1e-5):
        p = dict(x=x, weight=w, bias=b)
        if bn is None:
            return reference("linear_relu", p, dtype=x.dtype)
        p.update(zip(("running_mean", "running_var", "bn_weight", "bn_bias"), bn))
        return reference("linear_bn_gelu_relu", p, eps, dtype=x.dtype)

    bn = model.block.batch_norm
    h = fused(x, model.block.gemm.weight, model.block.gemm.bias, (bn.running_mean, bn.running_var, bn.weight, bn.bias),
              bn.eps)
    y = fused(h, model.head.weight, model.head.bias) - fused(h, model.plain.weight, None)
    y = y + fused(x, model.skip.weight, model.skip.bias)
    z = fused(x, model.block.gemm.weight, None, (bn.running_mean, bn.running_var, None, None), 1e-3)
    return y - 0.5 * z[..., : model.n]
