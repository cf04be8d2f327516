"""The bench's output: tables, the seed-problem summary, the JSON results file and the plot (matplotlib optional),
and the progress line."""
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from bench.cases import DTYPES, OPS

SEED_TARGET = 1.10  # the bound for fp16/bf16 fusedops at the seed problems: time / cuBLAS floor


def format_table(headers: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None,
                 separators: Sequence[int] = ()) -> str:
    """Plain-text table. align: one 'l' or 'r' per column (default: left). separators: row indices before which
    a blank line goes."""
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    align = align or "l" * len(headers)

    def line(vals):
        return "  ".join(v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(vals, widths, align)).rstrip()

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    seps = set(separators)
    for i, r in enumerate(cells):
        if i in seps and i:
            out.append("")
        out.append(line(r))
    return "\n".join(out)


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _short(s: Optional[str], n=60) -> str:
    """One line: the first line, and for a multi-line message (a Triton CompilationError, say) also its last."""
    lines = [ln.strip() for ln in (s or "").strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    s = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return s if len(s) <= n else s[: n - 3] + "..."


X_FLOOR_LABEL = ("x floor = contender time / cuBLAS GEMM-alone time at the same precision "
                 "(1.00 = as fast as the bare GEMM; lower is better)")


def results_table(results: Sequence[dict]) -> str:
    headers = ["problem", "op", "dtype", "M", "N", "K", "contender", "ms", "TFLOP/s", "x floor", "rel err", "check",
               "note"]
    rows, seps, last = [], [], None
    for r in results:
        key = (r["op"], r["dtype"], r["M"], r["N"], r["K"])
        if key != last:
            seps.append(len(rows))
            last = key
        note = _short(r.get("error"), 110) if r.get("error") else _short(r.get("note"), 60)
        rows.append([r.get("problem") or "", r["op"], r["dtype"], r["M"], r["N"], r["K"], r["contender"],
                     _fmt(r.get("median_ms"), ".4f"), _fmt(r.get("tflops"), ".1f"), _fmt(r.get("x_floor"), ".2f"),
                     _fmt(r.get("rel_err"), ".1e"), r.get("check") or "", note])
    return format_table(headers, rows, "lllrrrlrrrrll", seps)


def _eager_for(results: Sequence[dict], r: dict) -> Optional[dict]:
    for e in results:
        if (e["family"] == "eager" and e["precision"] == r["precision"] and
                (e["op"], e["dtype"], e["M"], e["N"], e["K"]) == (r["op"], r["dtype"], r["M"], r["N"], r["K"])):
            return e
    return None


def seed_summary_table(results: Sequence[dict], target: float = SEED_TARGET) -> str:
    """Rows of the seed problems only, with speed-up over eager at the same precision and, for fusedops with fp16 or
    bf16 inputs, whether it meets the target (time within `target` x the floor)."""
    headers = ["problem", "dtype", "contender", "ms", "TFLOP/s", "x floor", "vs eager", "check", "target"]
    rows, seps, last = [], [], None
    for r in results:
        if not r.get("problem"):
            continue
        key = (r["problem"], r["dtype"])
        if key != last:
            seps.append(len(rows))
            last = key
        e = _eager_for(results, r)
        speedup = (e["median_ms"] / r["median_ms"]) if (e and e.get("median_ms") and r.get("median_ms")) else None
        tgt = ""
        if r["family"] == "fusedops" and r["dtype"] in ("fp16", "bf16") and r.get("x_floor") is not None:
            tgt = f"{'met' if r['x_floor'] <= target else 'MISSED'} (<= {target:.2f})"
        rows.append([r["problem"], r["dtype"], r["contender"], _fmt(r.get("median_ms"), ".4f"),
                     _fmt(r.get("tflops"), ".1f"), _fmt(r.get("x_floor"), ".2f"),
                     _fmt(speedup, ".2f") + ("x" if speedup else ""), r.get("check") or "", tgt])
    return format_table(headers, rows, "lllrrrrll", seps)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in (0, 100]) of non-empty values."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


def ratio_summary_table(results: Sequence[dict]) -> str:
    """Per op, input dtype and precision, over every case with a timed fusedops row: the distribution of its time
    over the cuBLAS floor ("x floor") and over the eager composite's ("x eager"), as median, 90th percentile and
    worst (with its shape), and how many cases fusedops was slower than eager in."""
    groups: Dict[tuple, List[dict]] = {}
    for r in results:
        if r["family"] == "fusedops" and r.get("median_ms"):
            groups.setdefault((r["op"], r["dtype"], r["precision"]), []).append(r)
    headers = ["op", "dtype", "precision", "cases", "x floor: median", "p90", "worst (M N K)", "x eager: median",
               "p90", "worst (M N K)", "slower than eager"]
    rows = []
    for (op, dtype, precision), rs in sorted(groups.items()):
        cells = [op, dtype, precision, str(len(rs))]
        vs_eager = 0
        for ratio in ("floor", "eager"):
            pairs = []
            for r in rs:
                if ratio == "floor":
                    value = r.get("x_floor")
                else:
                    e = _eager_for(results, r)
                    value = r["median_ms"] / e["median_ms"] if e and e.get("median_ms") else None
                    vs_eager += value is not None and value > 1
                if value is not None:
                    pairs.append((value, r))
            if pairs:
                worst, where = max(pairs, key=lambda p: p[0])
                values = [v for v, _ in pairs]
                cells += [f"{percentile(values, 50):.2f}", f"{percentile(values, 90):.2f}",
                          f"{worst:.2f} ({where['M']} {where['N']} {where['K']})"]
            else:
                cells += ["-", "-", "-"]
        rows.append(cells + [str(vs_eager)])
    return format_table(headers, rows, "lllrrrlrrlr")


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def write_json(path, meta: dict, results: Sequence[dict]) -> Path:
    """All rows plus run metadata; NaN/inf become null; written atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_safe({"meta": meta, "results": list(results)}), indent=1))
    os.replace(tmp, path)
    return path


def plot_results(results: Sequence[dict], path) -> Optional[Path]:
    """One panel per seed problem and input dtype (grouped bars: TFLOP/s per contender, the cuBLAS floor as a dashed
    line), then one per sweep (op, dtype, N, K) (TFLOP/s against M, log x, a line per contender). None (with a
    warning) where matplotlib is missing or nothing was timed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        print(f"warning: no plot ({type(e).__name__}: {e}); install matplotlib for it", file=sys.stderr)
        return None
    seed: Dict[tuple, List[dict]] = {}
    sweeps: Dict[tuple, Dict[str, list]] = {}
    for r in results:
        if r.get("tflops") is None:
            continue
        if r.get("problem"):
            seed.setdefault((r["problem"], r["dtype"]), []).append(r)
        else:
            sweeps.setdefault((r["op"], r["dtype"], r["N"], r["K"]), {}).setdefault(r["contender"], []).append(
                (r["M"], r["tflops"]))
    if not seed and not sweeps:
        print("warning: no plot (nothing was timed)", file=sys.stderr)
        return None
    names = sorted({r["contender"] for r in results if r.get("tflops") is not None})
    cmap = plt.get_cmap("tab20")
    colors = {name: cmap(i % 20) for i, name in enumerate(names)}  # one colour per contender in every panel
    order = lambda k: (OPS.index(k[0]) if k[0] in OPS else 9, DTYPES.index(k[1]) if k[1] in DTYPES else 9,  # noqa
                       *k[2:])
    panels = [("seed", key) for key in sorted(seed, key=lambda k: (k[0], DTYPES.index(k[1]) if k[1] in DTYPES
                                                                   else 9))]
    panels += [("sweep", key) for key in sorted(sweeps, key=order)]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows), squeeze=False)
    for ax, (kind, key) in zip(axes.flat, panels):
        if kind == "seed":
            rows = seed[key]
            ax.bar(range(len(rows)), [r["tflops"] for r in rows], color=[colors[r["contender"]] for r in rows])
            ax.set_xticks(range(len(rows)), [r["contender"] for r in rows], rotation=40, ha="right", fontsize=7)
            for floor in {r["tflops"] for r in rows if r["family"] == "cublas"}:
                ax.axhline(floor, ls="--", lw=1, color="black", alpha=0.6)
            r0 = rows[0]
            ax.set_title(f"{key[0]}: {r0['op']} {key[1]} M={r0['M']} N={r0['N']} K={r0['K']} (dashed: cuBLAS)",
                         fontsize=8)
        else:
            for name, pts in sorted(sweeps[key].items()):
                pts = sorted(pts)
                style = "-" if not name.startswith("cublas[") and name != "cublas" else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, color=colors[name],
                        lw=1.6 if "fusedops" in name else 1.0, label=name)
            op, dt, n, k = key
            ax.set_title(f"{op} {dt} N={n} K={k}", fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("M")
            ax.legend(fontsize=6)
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class Progress:
    """tqdm where importable, else a plain line every couple of seconds (in place on a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.n, self.desc, self.enabled = total, 0, "", enabled
        self.t0 = self.last = time.time()
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.every = 2.0 if self.tty else 15.0  # seconds between plain progress lines
        if enabled and self.tty:  # a log file gets plain lines, not a bar's carriage returns
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr, smoothing=0.05,
                                mininterval=0.5)
            except Exception:  # noqa: BLE001
                self.bar = None

    def set(self, desc: str):
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description_str(desc[:70])
        else:
            self._plain(force=False)

    def update(self, k: int = 1):
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        else:
            self._plain(force=self.n >= self.total)

    def _plain(self, force):
        if not self.enabled:
            return
        now = time.time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        msg = f"[{self.n:>4}/{self.total}] {now - self.t0:6.0f} s  {self.desc}"
        if self.tty:
            sys.stderr.write("\r" + msg[:150].ljust(150) + ("\n" if force else ""))
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def write(self, msg: str):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            if self.tty:
                sys.stderr.write("\r" + " " * 150 + "\r")
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def finish_case_rows(rows: List[dict]) -> None:
    """Fill TFLOP/s, the floor and "x floor" in the rows of one case (in place)."""
    floors = {r["precision"]: r for r in rows if r["family"] == "cublas" and r.get("median_ms")}
    for r in rows:
        t = r.get("median_ms")
        r["tflops"] = (r["flops"] / (t * 1e-3) / 1e12) if t else None
        f = floors.get(r["precision"]) or floors.get(r["dtype"])
        if f is not None and t:
            r["floor_ms"], r["floor_contender"] = f["median_ms"], f["contender"]
            r["x_floor"] = t / f["median_ms"]
        else:
            r["floor_ms"] = r["floor_contender"] = r["x_floor"] = None
