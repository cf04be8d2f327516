"""Random malformed calls of both ops, each run where a crash cannot take the test runner down.

    python tests/bad_input_fuzz.py --device cuda --cases 240 --seed 0 --workers 4

Case i is drawn from random.Random(seed * 1_000_003 + i): a well-formed call (random op, dtype, leading dims, N, K,
optional vectors, entry point) with one or two defects, each naming the argument its error must name. Workers are
subprocesses that read case numbers on stdin and answer one JSON line per case; a worker that dies takes only the case
it was running with it (reported as a crash, with its exit status), and a new worker takes the rest. The last line
printed is a JSON summary; the exit status is 0 only if every case raised a clear error naming a defective argument.
"""
import argparse
import json
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The exception types a bad call may raise: torch's schema parser raises RuntimeError / TypeError, the ops
# RuntimeError (c10::Error), the Python wrappers TypeError / ValueError.
CLEAR_ERRORS = ("RuntimeError", "TypeError", "ValueError")
BAD_DTYPES = ("float64", "int32", "int64", "uint8", "bool", "complex64", "float8_e4m3fn")
VECTORS = ("bias", "running_mean", "running_var", "bn_weight", "bn_bias")


def draw_case(seed, index):
    """A JSON-able description of one malformed call."""
    rng = random.Random(seed * 1_000_003 + index)
    op = rng.choice(["linear_relu", "linear_bn_gelu_relu"])
    case = dict(index=index, op=op, dtype=rng.choice(["float16", "bfloat16", "float32"]),
                lead=[rng.choice([1, 3, 17, 64, 300]) for _ in range(rng.choice([1, 1, 2]))],
                n=rng.choice([1, 16, 33, 272, 1024]), k=rng.choice([1, 8, 64, 100, 512]),
                bias=rng.random() < 0.8, affine=rng.random() < 0.7, vec_dtype=rng.choice(["float32", "x"]),
                entry=rng.choice(["op", "op_precision", "python"]), eps=1e-5, defects=[])
    vectors = ["bias"] + (["running_mean", "running_var", "bn_weight", "bn_bias"] if op != "linear_relu" else [])
    kinds = ["x_rank0", "weight_rank", "k_mismatch", "x_dtype", "weight_dtype", "weight_device", "x_none",
             "weight_none", "vector_length", "vector_rank", "vector_dtype", "vector_device", "precision"]
    if op != "linear_relu":
        kinds += ["eps_negative", "eps_nan", "stat_none"]
    # (a None is applied last: the other defects need the tensor it replaces)
    for kind in sorted(rng.sample(kinds, rng.choice([1, 1, 2])), key=lambda kind: kind.endswith("none")):
        defect = dict(kind=kind)
        if kind.startswith("vector_"):
            defect["name"] = rng.choice(vectors)
        elif kind == "stat_none":
            defect["name"] = rng.choice(["running_mean", "running_var"])
        if kind in ("x_dtype", "weight_dtype", "vector_dtype"):
            defect["dtype"] = rng.choice(BAD_DTYPES if kind != "weight_dtype" else BAD_DTYPES + ("other_float",))
        if kind in ("weight_device", "vector_device"):
            defect["device"] = rng.choice(["cpu", "meta"])
        if kind == "weight_rank":
            defect["rank"] = rng.choice([1, 3])
        if kind == "vector_rank":
            defect["rank"] = rng.choice([0, 2])
        if kind == "vector_length":
            defect["delta"] = rng.choice([-1, 1, 5])
        if kind == "k_mismatch":
            defect["delta"] = rng.choice([-1, 1, 16])
        if kind == "precision":
            defect["value"] = rng.choice(["fast", "", "FP16", "tf16", "ieee "])
        case["defects"].append(defect)
    return case


def expected_names(case):
    """The arguments whose name a clear error for this case may carry."""
    names = {"x_rank0": "x", "x_dtype": "x", "x_none": "x", "k_mismatch": "weight", "weight_rank": "weight",
             "weight_dtype": "weight", "weight_device": "weight", "weight_none": "weight", "precision": "precision",
             "eps_negative": "eps", "eps_nan": "eps"}
    out = set()
    for d in case["defects"]:
        out.add(d.get("name") or names[d["kind"]])
        if d["kind"] in ("x_dtype",):  # a bad x dtype also makes weight's dtype differ: either may be reported first
            out.add("weight")
    return sorted(out)


def run_case(case, device):
    """Make the call; returns (exception type name or None, message)."""
    import torch
    import fusedops

    def dtype_of(name, x_dtype):
        if name == "other_float":
            return next(d for d in (torch.float16, torch.float32) if d != x_dtype)
        return getattr(torch, name)

    g = torch.Generator().manual_seed(case["index"])
    x_dtype = getattr(torch, case["dtype"])
    vec_dtype = x_dtype if case["vec_dtype"] == "x" else torch.float32
    n, k = case["n"], case["k"]
    t = dict(x=torch.randn(*case["lead"], k, generator=g).to(device, x_dtype),
             weight=(torch.randn(n, k, generator=g) * k ** -0.5).to(device, x_dtype),
             bias=torch.randn(n, generator=g).to(device, vec_dtype) if case["bias"] else None,
             running_mean=torch.randn(n, generator=g).to(device, vec_dtype),
             running_var=(torch.rand(n, generator=g) + 0.5).to(device, vec_dtype),
             bn_weight=torch.randn(n, generator=g).to(device, vec_dtype) if case["affine"] else None,
             bn_bias=torch.randn(n, generator=g).to(device, vec_dtype) if case["affine"] else None)
    eps, precision = case["eps"], "auto"
    other_device = lambda d: "meta" if d["device"] == device else d["device"]  # noqa: E731
    for d in case["defects"]:
        kind = d["kind"]
        if kind == "x_rank0":
            t["x"] = t["x"].reshape(-1)[0]
        elif kind == "weight_rank":
            t["weight"] = t["weight"][0] if d["rank"] == 1 else t["weight"][None]
        elif kind == "k_mismatch":  # another K (>= 0; delta is never 0)
            t["weight"] = torch.randn(n, k + d["delta"] if k + d["delta"] >= 0 else k + 1).to(
                t["weight"].device, t["weight"].dtype)
        elif kind == "x_dtype":
            t["x"] = t["x"].to(dtype_of(d["dtype"], x_dtype))
        elif kind == "weight_dtype":
            t["weight"] = t["weight"].to(dtype_of(d["dtype"], x_dtype))
        elif kind == "weight_device":
            t["weight"] = t["weight"].to(other_device(d))
        elif kind == "x_none":
            t["x"] = None
        elif kind == "weight_none":
            t["weight"] = None
        elif kind.startswith("vector_"):
            v = t[d["name"]]
            if v is None:  # an absent optional vector: make a present, defective one
                v = torch.ones(n, device=device)
            if kind == "vector_length":  # another N (>= 0; delta is never 0)
                v = torch.ones(n + d["delta"] if n + d["delta"] >= 0 else n + 1, device=v.device, dtype=v.dtype)
            elif kind == "vector_rank":
                v = v[0] if d["rank"] == 0 else v[None]
            elif kind == "vector_dtype":
                v = v.to(dtype_of(d["dtype"], x_dtype))
            elif kind == "vector_device":
                v = v.to(other_device(d))
            t[d["name"]] = v
        elif kind == "stat_none":
            t[d["name"]] = None
        elif kind == "eps_negative":
            eps = -1e-3
        elif kind == "eps_nan":
            eps = float("nan")
        elif kind == "precision":
            precision = d["value"]
    if precision != "auto" and case["entry"] == "op":
        case = dict(case, entry="op_precision")  # the default overload has no precision argument
    relu = case["op"] == "linear_relu"
    vec = [t["bias"]] if relu else [t["bias"], t["running_mean"], t["running_var"], t["bn_weight"], t["bn_bias"], eps]
    try:
        if case["entry"] == "python":
            getattr(fusedops, case["op"])(t["x"], t["weight"], *vec, precision=precision)
        elif case["entry"] == "op_precision":
            getattr(torch.ops.fusedops, case["op"]).precision(t["x"], t["weight"], *vec, precision=precision)
        else:
            getattr(torch.ops.fusedops, case["op"]).default(t["x"], t["weight"], *vec)
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001  (what is raised is the result)
        return type(e).__name__, str(e).split("\n")[0][:400]
    return None, ""


def worker(device, seed, abort_at):
    """Answers case numbers read from stdin, one JSON line each (abort_at: die on that case, to test the harness)."""
    sys.path.insert(0, str(HERE))
    import torch  # noqa: F401  (before the first case: its import time is not a case's)
    import fusedops  # noqa: F401
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = draw_case(seed, int(line))
        print(json.dumps({"start": case["index"]}), flush=True)
        if case["index"] == abort_at:
            os.abort()
        kind, message = run_case(case, device)
        print(json.dumps({"index": case["index"], "raised": kind, "message": message}), flush=True)


def judge(case, raised, message):
    """'' when the call raised a clear error naming a defective argument, else what is wrong."""
    if raised is None:
        return "no error raised"
    if raised not in CLEAR_ERRORS:
        return f"raised {raised}, not one of {CLEAR_ERRORS}"
    if not any(f"'{name}'" in message for name in expected_names(case)):
        return f"the message names none of {expected_names(case)}"
    return ""


def run(device, cases, seed, workers, abort_at=-1):
    """Runs cases 0..cases-1 over `workers` subprocesses; returns (failures, summary)."""
    todo = list(range(cases))
    results, failures = {}, []
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def start():
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--device", device, "--seed", str(seed),
                                 "--abort-at", str(abort_at)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        assert json.loads(proc.stdout.readline() or "{}").get("ready"), proc.stderr.read()[-2000:]
        return proc

    def drain(queue):
        """Feeds one worker its cases one at a time; a worker that dies is replaced for the rest."""
        proc = None
        while queue:
            if proc is None:
                proc = start()
            index = queue.pop(0)
            proc.stdin.write(f"{index}\n")
            proc.stdin.flush()
            started = proc.stdout.readline()
            answer = proc.stdout.readline()
            if not started or not answer:  # the process died on this case
                code = proc.wait()
                tail = proc.stderr.read()[-600:]
                results[index] = dict(raised="CRASH", message=f"worker exit status {code}: {tail}")
                proc = None
                continue
            results[index] = json.loads(answer)
        if proc is not None:
            proc.stdin.close()
            proc.wait()

    with ThreadPoolExecutor(workers) as pool:  # one queue per worker, dealt round-robin
        list(pool.map(drain, [todo[i::workers] for i in range(workers)]))
    for index in range(cases):
        r = results[index]
        case = draw_case(seed, index)
        problem = "process crashed: " + r["message"] if r["raised"] == "CRASH" else judge(case, r["raised"],
                                                                                          r["message"])
        if problem:
            failures.append(dict(index=index, defects=case["defects"], op=case["op"], entry=case["entry"],
                                 problem=problem, raised=r["raised"], message=r["message"]))
    raised = {}
    for r in results.values():
        raised[r["raised"] or "none"] = raised.get(r["raised"] or "none", 0) + 1
    return failures, dict(device=device, cases=cases, seed=seed, failures=len(failures), raised=raised)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--abort-at", type=int, default=-1, help="a worker dies on this case (tests the harness)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.device, args.seed, args.abort_at)
    failures, summary = run(args.device, args.cases, args.seed, args.workers, args.abort_at)
    for f in failures:
        print(json.dumps(f))
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
