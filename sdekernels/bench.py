"""The bench table: for every registered op and bench shape, the reference, our op and any
baselines timed in the same run, with peak memory, achieved GB/s and FLOP/s, and the fraction
of the device's limit (bytes over bandwidth, flops over peak)."""
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from .registry import Sample, all_ops, flat

# Published dense peaks: (memory GB/s, fp32 non-tensor TFLOP/s, tf32/bf16 tensor TFLOP/s).
GPU_LIMITS = {
    "H100 SXM": (3350.0, 67.0, 989.0), "H100 PCIe": (2000.0, 51.0, 756.0), "H100": (3350.0, 67.0, 989.0),
    "H200": (4800.0, 67.0, 989.0), "A100": (2039.0, 19.5, 312.0), "L4": (300.0, 30.3, 121.0),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device, reps: int = 5, warmup: int = 1, budget_s: float = 2.0) -> float:
    """Median seconds of `fn()` over `reps` runs (fewer if one run exceeds the budget)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) > budget_s and len(times) >= 2:
            break
    return statistics.median(times)


def interleaved_times(fns: dict, runs: int, clock=time.perf_counter, warmup: int = 1, device=None) -> dict[str, list]:
    """Seconds of each of `runs` calls of every `fns[name]()` by `clock` (wall time by default;
    time.process_time for the process's CPU time). After `warmup` calls of each, the runs are
    interleaved (one call of every function per round), so changes in the machine's load hit
    all of them alike, and round i of one function can be compared with round i of another.
    On CUDA each call is timed up to a device synchronisation."""
    sync = (lambda: _sync(device)) if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            sync()
            times[name].append(clock() - t0)
    return times


def interleaved_ms(fns: dict, runs: int, clock=time.perf_counter, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each `fns[name]()` over `runs` interleaved runs (see interleaved_times)."""
    return {name: 1e3 * statistics.median(t) for name, t in interleaved_times(fns, runs, clock, warmup).items()}


def quartiles(values) -> tuple[float, float, float]:
    """(first quartile, median, third quartile)."""
    if len(values) < 2:
        return (values[0],) * 3
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def load_open_clip_loss():
    """open_clip/loss.py (ClipLoss, SigLipLoss) of the installed open-clip-torch, loaded by file path:
    `import open_clip` needs torchvision, its loss module only torch. None when not installed."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "loss.py")
    module_spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def fwd_bwd(fn, *inputs, weight=None):
    """A closure that runs `fn` on fresh leaf copies of `inputs` (all requiring grad) and the
    backward of its output: of the output itself (a scalar loss) when `weight` is None, else of
    (output · weight).sum()."""
    def run():
        out = fn(*(t.detach().requires_grad_() for t in inputs))
        (out if weight is None else (out * weight).sum()).backward()
    return run


def peak_memory(fn, device) -> int:
    """Peak bytes allocated while `fn()` runs, above what was allocated before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # The raw allocation events, in order (per-op totals would count nested ops twice).
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """The CPU profiler's native layer prints start/stop lines on fd 2; keep the table clean."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_CPU_LIMITS = None


def device_limits(device) -> dict:
    """Memory bandwidth (GB/s) and fp32 FLOP/s limit: published for known GPUs, measured on CPU."""
    global _CPU_LIMITS
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bw, f32, tc) in GPU_LIMITS.items():
            if key in name:
                return {"device": name, "bandwidth_GBs": bw, "tflops_fp32": f32, "tflops_tensor": tc,
                        "source": "datasheet"}
        return {"device": name, "bandwidth_GBs": float("nan"), "tflops_fp32": float("nan"), "source": "unknown"}
    if _CPU_LIMITS is None:
        x = torch.empty(32 * 2**20, dtype=torch.float32).uniform_()
        y = torch.empty_like(x)
        t = timeit(lambda: y.copy_(x), device, reps=7)
        a = torch.randn(1024, 1024)
        tm = timeit(lambda: a @ a, device, reps=7)
        _CPU_LIMITS = {"device": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                       "bandwidth_GBs": 2 * x.numel() * 4 / t / 1e9, "tflops_fp32": 2 * 1024**3 / tm / 1e12,
                       "source": "measured (copy, 1024² matmul)"}
    return dict(_CPU_LIMITS)


def _runner(fn, sample: Sample, backward: bool, info):
    """A closure that runs one call (forward, or forward + backward of a random-weighted sum)."""
    if not backward:
        def run():
            with torch.no_grad():
                return sample.call(fn)
        return run
    leaves = info.leaves(sample)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(t.shape, generator=gen).to(t.device, t.dtype)
               for t in flat(leaves.call(fn)) if t.is_floating_point()]

    def run():
        outs = [t for t in flat(leaves.call(fn)) if t.is_floating_point()]
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
    return run


def _label(shape: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items() if k not in ("quick", "backward"))


def _ratios(num: list, den: list) -> tuple[float, float, float]:
    """Quartiles of the per-round ratios num[i] / den[i] of two interleaved timings."""
    return quartiles([a / b for a, b in zip(num, den)])


def run(names=None, *, quick=False, device=None, dtype=torch.float32, compile_ref=False, progress=True,
        budget_s: float = 3.0, max_runs: int = 31, clock=time.perf_counter, shapes=None):
    """Rows of the bench table (one per op, shape and implementation).

    Per case every implementation runs twice (compilation, first-call allocations; the second
    call sizes the run to `budget_s`), then 5 to `max_runs` interleaved rounds. Times are medians
    with quartiles by `clock` (time.process_time on a loaded CPU: the process's own CPU time, which
    preemption does not inflate; meaningful with one thread); the ratios are medians of per-round
    ratios. On the sdekernels row, vs_best is
    the ratio against the fastest (by median) of every other implementation timed: the
    reference, its compiled form and the op's baselines. `shapes`: only the cases whose label
    (e.g. "B=4096,d=256") starts with one of these."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ops = all_ops()
    unknown = set(names or ()) - set(ops)
    if unknown:
        raise ValueError(f"unknown op(s) {sorted(unknown)}; registered: {sorted(ops)}")
    limits = device_limits(device)
    cases = [(info, shape) for name, info in sorted(ops.items()) if not names or name in names
             for shape in info.bench if (not quick or shape.get("quick"))
             and (not shapes or any(_label(shape).startswith(p) for p in shapes))]
    rows = []
    try:
        from tqdm import tqdm
        cases_iter = tqdm(cases, desc="bench", disable=not progress)
    except ImportError:  # pragma: no cover
        cases_iter = cases
    for info, shape in cases_iter:
        sample = Sample(*info.make(shape, device, dtype, torch.Generator().manual_seed(0)).prepared())
        backward = bool(shape.get("backward")) and info.differentiable
        nbytes, flops = info.cost(sample)
        if backward:  # a backward pass reads and writes about twice what the forward does
            nbytes, flops = 3 * nbytes, 3 * flops
        impls = {"reference": info.ref, "sdekernels": info.op, **info.baselines}
        if compile_ref:
            impls["reference (compiled)"] = torch.compile(info.ref)
        calls, errors = {}, {}
        for impl, fn in impls.items():
            try:
                calls[impl] = _runner(fn, sample, backward, info)
                calls[impl]()
            except Exception as e:  # a baseline that cannot run this case (e.g. out of memory)
                calls.pop(impl, None)
                errors[impl] = f"{type(e).__name__}: {str(e)[:120]}"
        t0 = time.perf_counter()
        for call in calls.values():
            call()
        _sync(device)
        runs = max(5, min(max_runs, int(budget_s / max(time.perf_counter() - t0, 1e-9))))
        times = interleaved_times(calls, runs, clock=clock, warmup=0, device=device)
        others = [i for i in times if i != "sdekernels"]
        best = min(others, key=lambda i: statistics.median(times[i])) if others else None
        for impl in impls:
            row = {"op": info.name, "shape": _label(shape), "dtype": str(dtype).replace("torch.", ""),
                   "pass": "fwd+bwd" if backward else "fwd", "impl": impl}
            if impl in errors:
                rows.append({**row, "error": errors[impl]})
                continue
            t = times[impl]
            q1, med, q3 = quartiles(t)
            row.update(ms=med * 1e3, ms_q1=q1 * 1e3, ms_q3=q3 * 1e3, runs=runs,
                       peak_MB=peak_memory(calls[impl], device) / 2**20, GBs=nbytes / med / 1e9,
                       TFLOPs=flops / med / 1e12)
            row["bw_frac"] = row["GBs"] / limits["bandwidth_GBs"]
            row["flop_frac"] = row["TFLOPs"] / limits["tflops_fp32"]
            if "reference" in times:
                row["speedup"] = _ratios(times["reference"], t)[1]
            if impl == "sdekernels":
                if "reference (compiled)" in times:
                    row["vs_compiled"] = _ratios(times["reference (compiled)"], t)[1]
                if best:
                    row["vs_best_q1"], row["vs_best"], row["vs_best_q3"] = _ratios(times[best], t)
                    row["best_alternative"] = best
            rows.append(row)
    return rows, limits


def environment(limits: dict) -> dict:
    import subprocess

    from . import _core, _ext
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=__file__.rsplit("/", 2)[0]).stdout.strip()
    except OSError:
        commit = ""
    tri = None
    if _core.HAS_TRITON:
        import triton
        tri = triton.__version__
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": tri, "python": platform.python_version(),
            "extension": _ext.status(), "commit": commit or os.environ.get("SDEKERNELS_COMMIT"), "limits": limits,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


_LABELS = {"vs_compiled": "vs compiled ref", "vs_best": "vs best alternative"}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else ("-" if isinstance(v, float) else str(v))


def table(rows) -> str:
    cols = ["op", "shape", "pass", "impl", "ms", "speedup", "vs_compiled", "vs_best", "peak_MB", "GBs", "bw_frac",
            "TFLOPs", "flop_frac"]
    cells = [[_LABELS.get(c, c) for c in cols]]
    cells += [[r["error"] if c == "ms" and "error" in r else _fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def markdown(rows) -> str:
    """One line per case: our time, the reference's and the best alternative's, the ratios against
    each (medians of interleaved per-round ratios; vs best alternative with its quartiles)."""
    head = ("| op | shape | pass | sdekernels ms (quartiles) | reference ms | best alternative (ms) | vs reference "
            "| vs compiled ref | vs best alternative (quartiles) | peak MB (ours / ref) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    by_case = {}
    for r in rows:
        by_case.setdefault((r["op"], r["shape"], r["pass"]), {})[r["impl"]] = r
    x = lambda v: f"{v:.2f}x" if isinstance(v, float) and math.isfinite(v) else "-"  # noqa: E731
    for (op, shape, pas), impls in by_case.items():
        ours, ref = impls.get("sdekernels", {}), impls.get("reference", {})
        if "ms" not in ours:
            lines.append(f"| {op} | {shape} | {pas} | {ours.get('error', '-')} | | | | | | |")
            continue
        best = impls.get(ours.get("best_alternative"), {})
        lines.append(
            f"| {op} | {shape} | {pas} | {_fmt(ours['ms'])} ({_fmt(ours['ms_q1'])}–{_fmt(ours['ms_q3'])}) "
            f"| {_fmt(ref.get('ms', float('nan')))} "
            f"| {ours.get('best_alternative', '-')} ({_fmt(best.get('ms', float('nan')))}) "
            f"| {x(ours.get('speedup'))} | {x(ours.get('vs_compiled'))} "
            f"| **{x(ours.get('vs_best'))}** ({x(ours.get('vs_best_q1'))}–{x(ours.get('vs_best_q3'))}) "
            f"| {_fmt(ours['peak_MB'])} / {_fmt(ref.get('peak_MB', float('nan')))} |")
    return "\n".join(lines)


def write_json(path: str, rows, limits) -> None:
    with open(path, "w") as f:
        json.dump({"environment": environment(limits), "rows": rows}, f, indent=1, default=str)


def plot(rows, path: str, title: str = "") -> None:
    """Bar chart of the speedup over the reference of every implementation, per op and shape."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["op"], r["shape"], r["pass"]) for r in rows))
    impls = [i for i in dict.fromkeys(r["impl"] for r in rows) if i != "reference"]
    speed = {(r["op"], r["shape"], r["pass"], r["impl"]): r.get("speedup", float("nan")) for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases) + 2), 4.5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        ax.bar([i + j * width for i in range(len(cases))], [speed.get((*c, impl), float("nan")) for c in cases],
               width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup over the reference (log)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{o}\n{s}\n{p}" for o, s, p in cases], fontsize=6, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
