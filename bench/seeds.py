"""The seed documents (shared/seeds): the Triton kernels the ops started from, loaded as a bench contender."""
import hashlib
import linecache
import re
import types
from pathlib import Path
from typing import Dict, List, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
# Seed document prefix and the wrapper each defines, per op.
SEED_FILES = {"linear_bn_gelu_relu": ("000_", "fused_linear_bn_gelu_relu"),
              "linear_relu": ("001_", "fused_linear_relu")}


def seed_dir_candidates(explicit=None) -> List[Path]:
    if explicit:
        return [Path(explicit)]
    return [REPO_ROOT / "shared" / "seeds", REPO_ROOT.parent / "shared" / "seeds"]


def find_seed_dir(explicit=None) -> Optional[Path]:
    for d in seed_dir_candidates(explicit):
        if d.is_dir():
            return d
    return None


def seed_file(seed_dir: Path, prefix: str) -> Optional[Path]:
    found = sorted(Path(seed_dir).glob(prefix + "*.txt"))
    return found[0] if found else None


_CODE_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.DOTALL)


def extract_current_code(text: str) -> str:
    """The first ```python block after the "[CURRENT CODE]" marker."""
    at = text.find("[CURRENT CODE]")
    if at < 0:
        raise ValueError("no [CURRENT CODE] marker in the seed document")
    m = _CODE_BLOCK.search(text, at)
    if not m:
        raise ValueError("no ```python block after [CURRENT CODE] in the seed document")
    return m.group(1)


def load_seed_module(path, module_name: Optional[str] = None) -> types.ModuleType:
    """Exec a seed document's current code into a fresh module. The source is registered with linecache under a
    pseudo file name so that @triton.jit (which reads its function's source through inspect) finds it."""
    path = Path(path)
    code = extract_current_code(path.read_text())
    name = module_name or "bench_seed_" + re.sub(r"\W", "_", path.stem)
    filename = f"<seed {path.name}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    mod = types.ModuleType(name, f"seed code from {path}")
    mod.__file__ = filename
    exec(compile(code, filename, "exec"), mod.__dict__)
    mod.SEED_SOURCE_SHA256 = hashlib.sha256(code.encode()).hexdigest()
    return mod


def seed_entry(label: Optional[str], error: Optional[str] = None) -> dict:
    """A seed op's entry before (or instead of) loading its document."""
    return dict(module=None, wrapper=None, file=None, sha256=None, error=error, label=label)


def load_seeds(seed_dir: Optional[Path]) -> Dict[str, dict]:
    """op -> {module, wrapper, file, sha256, error}; module None (and error set) where it could not be loaded."""
    out = {}
    for op, (prefix, wrapper) in SEED_FILES.items():
        entry = seed_entry(label="seed " + prefix[:-1])
        if seed_dir is None:
            entry["error"] = "seed directory not found"
        else:
            path = seed_file(seed_dir, prefix)
            if path is None:
                entry["error"] = f"no {prefix}*.txt in {seed_dir}"
            else:
                entry["file"] = str(path)
                try:
                    mod = load_seed_module(path)
                    fn = getattr(mod, wrapper, None)
                    if fn is None:
                        raise AttributeError(f"the seed code defines no {wrapper}()")
                    entry.update(module=mod, wrapper=fn, sha256=mod.SEED_SOURCE_SHA256)
                except Exception as e:  # noqa: BLE001 - report, never abort
                    entry["error"] = f"{type(e).__name__}: {e}"
        out[op] = entry
    return out
