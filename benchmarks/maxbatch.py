"""The largest contrastive batch per memory budget: info_nce and siglip_loss against open_clip's
ClipLoss and SigLipLoss (explicit B×B logits) and, on a GPU, Inf-CL's cal_inf_loss.

CPU (--run): every point (loss, B, d, dtype) is one forward + backward in a fresh process (capped at
8 GiB of address space): the loss's own peak, from the profiler's allocation events (inputs made
before, not counted; their gradients counted), beside the process's peak RSS above its RSS before
the call, and the call's CPU time (one thread). Per (loss, d, dtype), a non-negative least-squares
fit of peak ≈ a + b·B + c·B² (relative residuals), and from it the largest B for 1, 4, 16 and 80 GiB
(derived). Then one point per loss is confirmed near a budget: a process whose address space is
capped at its size after setup plus the budget runs the fit's max B (it must fit) and 1.5× that
(it must fail with MemoryError or RuntimeError, the parent unharmed).

GPU (--gpu OUTDIR, a stage of benchmarks/gpu.sh): per (loss, d, dtype) a search for the largest B
(doubling, then bisecting) whose forward + backward fits the device (torch.cuda.max_memory_allocated,
an out-of-memory error is "does not fit"), stopped early where one call takes longer than --limit-s.

    python benchmarks/maxbatch.py --run        # measure, fit, confirm; write the record, tables and plot
    python benchmarks/maxbatch.py --render     # tables and plot again from the record
    python benchmarks/maxbatch.py --confirm    # the capped confirmations again, from the record's fits
    python benchmarks/maxbatch.py --verify     # one point per loss again, against the record
    python benchmarks/maxbatch.py --gpu OUTDIR [--dry]
"""
import argparse
import itertools
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as Fn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
RECORD = os.path.join(RESULTS, "maxbatch-cpu.json")
TABLE = os.path.join(RESULTS, "maxbatch.md")
PLOT = os.path.join(RESULTS, "maxbatch-cpu.png")
README = os.path.join(ROOT, "README.md")
MARKED = re.compile(r"(<!-- maxbatch-table -->\n).*?\n?(<!-- /maxbatch-table -->)", re.S)

GiB = 2**30
BUDGETS_GIB = (1, 4, 16, 80)
PROCESS_CAP = 8 * GiB  # no measuring process may take more (a shared 24 GB machine)
MMAP_THRESHOLD = 128 * 1024  # glibc's default, fixed: no dynamic rise that keeps freed large blocks on the heap
SLACK = 16 * 2**20  # a capped process's own mappings beyond the allocator's peak (see METHOD)
VERIFY_TOL = 0.03  # the allocator's peak is deterministic; 3 % leaves room for a library's workspace
OURS = {"info_nce": "open_clip ClipLoss", "siglip_loss": "open_clip SigLipLoss"}
INF_CL = "Inf-CL cal_inf_loss"
LOSSES = (*OURS, *OURS.values(), INF_CL)
CONFIGS = [(d, dtype) for d in (512, 1024) for dtype in ("float32", "bfloat16")]
# Confirmations at d = 512, float32: a budget whose max B runs in seconds here.
CONFIRM = {"info_nce": 128 * 2**20, "siglip_loss": 128 * 2**20, "open_clip ClipLoss": GiB,
           "open_clip SigLipLoss": GiB}


def loss_fn(name: str):
    """The loss as f(a, b, logit_scale, logit_bias) -> scalar; ImportError when its package is missing."""
    import sdekernels
    if name == "info_nce":
        return lambda a, b, s, t: sdekernels.info_nce(a, b, logit_scale=s)
    if name == "siglip_loss":
        return lambda a, b, s, t: sdekernels.siglip_loss(a, b, s, t)
    if name.startswith("open_clip"):
        from sdekernels.bench import load_open_clip_loss
        oc = load_open_clip_loss()
        if oc is None:
            raise ImportError("open-clip-torch is not installed")
        if name == "open_clip ClipLoss":
            clip = oc.ClipLoss()
            return lambda a, b, s, t: clip(a, b, s)
        sig = oc.SigLipLoss()
        return lambda a, b, s, t: sig(a, b, s, t)
    if name == INF_CL:
        from inf_cl import cal_inf_loss  # asserts CUDA tensors

        def inf_cl(a, b, s, t):  # CLIP's two directions, as Inf-CL's own training code does
            head = min(256, a.shape[-1])
            return 0.5 * (cal_inf_loss(a, b, scale=s, head_dim=head) + cal_inf_loss(b, a, scale=s, head_dim=head))
        return inf_cl
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


def features(B: int, d: int, dtype, device, seed: int = 0):
    """Unit rows (as open_clip's models give them), made in float32 and cast."""
    g = torch.Generator().manual_seed(seed)
    a = Fn.normalize(torch.randn(B, d, generator=g), dim=-1)
    b = Fn.normalize(0.5 * a + torch.randn(B, d, generator=g), dim=-1)
    return a.to(device, dtype), b.to(device, dtype)


def step(fn, a, b):
    """One forward + backward with fresh leaves; logit scale and bias are learnable, as in training."""
    s = torch.tensor(10.0, device=a.device, requires_grad=True)
    t = torch.tensor(-10.0, device=a.device, requires_grad=True)
    fn(a.detach().requires_grad_(), b.detach().requires_grad_(), s, t).backward()


def _status(key: str) -> int:
    """Bytes of a /proc/self/status field (VmRSS, VmHWM, VmSize); 0 where there is none."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return 0


def _reset_hwm() -> bool:
    """Reset the peak RSS to the current RSS (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(name: str, B: int, d: int, dtype: str = "float32", device="cpu", budget: int | None = None) -> dict:
    """One forward + backward of `name` at (B, d, dtype), after an untimed call at 64 rows.
    Without a budget: peak_bytes (allocator peak above what was allocated before; CPU: the profiler's
    allocation events, CUDA: max_memory_allocated), rss_peak_bytes (CPU, Linux: peak RSS above the
    RSS before) and seconds (CPU time on CPU). With a budget (CPU, bytes): no profiler, the address
    space capped at its size now plus the budget. ok is False, with the error, where it ran out."""
    from sdekernels import bench

    device = torch.device(device)
    fn = loss_fn(name)
    a, b = features(B, d, getattr(torch, dtype), device)
    step(fn, a[:64], b[:64])
    row = {"loss": name, "B": B, "d": d, "dtype": dtype, "device": bench.device_name(device)}
    if budget is not None:
        row["budget_bytes"] = budget
        if device.type == "cpu":
            limit = _status("VmSize") + budget
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    clock = bench.clock(device, cpu_time=device.type == "cpu" and torch.get_num_threads() == 1)
    spent = []

    def timed():
        t0 = clock()
        step(fn, a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent.append(clock() - t0)

    rss = _status("VmRSS") if device.type == "cpu" and _reset_hwm() else None
    try:
        if budget is not None and device.type == "cpu":
            timed()
            row["peak_bytes"] = None
        else:
            row["peak_bytes"] = bench.peak_memory(timed, device)
    except (MemoryError, RuntimeError) as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        return {**row, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    row["rss_peak_bytes"] = _status("VmHWM") - rss if rss else None
    return {**row, "ok": True, "seconds": spent[0]}


def measure_in_process(name, B, d, dtype, budget=None, cap=PROCESS_CAP, timeout=1800) -> dict:
    """measure() in a fresh Python process, its address space capped at `cap` (a crash, a kill or a
    cap hit is a row with ok False, never an error here)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--point", name, str(B), str(d), dtype]
    cmd += ["--budget", str(budget)] if budget is not None else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    if budget is not None:  # glibc returns each freed large block (see METHOD)
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=limit, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"loss": name, "B": B, "d": d, "dtype": dtype, "ok": False, "error": f"timeout after {timeout} s"}
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or [""])[-1][:160]
        return {"loss": name, "B": B, "d": d, "dtype": dtype, "ok": False,
                "error": f"process exit {out.returncode}: {tail}"}
    return json.loads(lines[-1])


# ---------------------------------------------------------------- fit and derive


def fit(Bs, peaks) -> dict:
    """peak ≈ a + b·B + c·B² with a, b, c >= 0, least squares of the relative residuals (every
    subset of the three terms, the best non-negative one). exponent: the growth between the two
    largest points, log(peak ratio) / log(B ratio), model-free; order: O(B²) where it is at least
    1.5, else O(B). quadratic_share: c·B² over the model at the largest B (a kink between two linear
    phases of a peak also reads as curvature here: the exponent tells them apart)."""
    import numpy as np

    B = np.asarray(Bs, dtype=np.float64)
    y = np.asarray(peaks, dtype=np.float64)
    X = np.stack([np.ones_like(B), B, B * B], 1) / y[:, None]
    best = None
    for k in range(1, 4):
        for cols in itertools.combinations(range(3), k):
            if len(B) < k:
                continue
            coef, *_ = np.linalg.lstsq(X[:, cols], np.ones_like(y), rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(3)
            full[list(cols)] = coef
            err = float(np.sum((X @ full - 1) ** 2))
            if best is None or err < best[0] - 1e-12:
                best = (err, full)
    a, b, c = (float(v) for v in best[1])
    (B1, y1), (B2, y2) = sorted(zip(B.tolist(), y.tolist()))[-2:]
    exponent = math.log(y2 / y1) / math.log(B2 / B1)
    return {"a": a, "b": b, "c": c, "exponent": exponent, "order": "O(B²)" if exponent >= 1.5 else "O(B)",
            "quadratic_share": c * B2 * B2 / (a + b * B2 + c * B2 * B2), "points": len(B),
            "max_rel_residual": float(np.max(np.abs(X @ best[1] - 1)))}


def predict(model: dict, B: float) -> float:
    return model["a"] + model["b"] * B + model["c"] * B * B


def max_batch(model: dict, budget: float) -> int:
    """The largest B with a + b·B + c·B² <= budget (0 if none; the roots' stable form)."""
    a, b, c = model["a"], model["b"], model["c"]
    room = budget - a
    if room < 0:
        return 0
    if b <= 0 and c <= 0:
        raise ValueError("a model that does not grow with B has no largest batch")
    return int(2 * room / (b + math.sqrt(b * b + 4 * c * room)))


def search(fits, lo: int, hi: int, quantum: int) -> tuple[int, str, list]:
    """The largest multiple of `quantum` in [lo, hi] for which fits(B) -> (ok, seconds) holds, by
    doubling from lo, then bisecting. Returns (B, why it stopped: "memory" at the first B that did not
    fit, "time" where fits said stop, "hi"; B = 0 when lo does not fit, tries)."""
    tries, good, bad, why = [], 0, None, "hi"
    B = lo
    while B <= hi:
        ok, stop = fits(B)
        tries.append((B, ok))
        if not ok:
            bad, why = B, "memory"
            break
        good = B
        if stop:
            return good, "time", tries
        B *= 2
    while bad is not None and bad - good > quantum:
        mid = (good + bad) // 2 // quantum * quantum
        if mid <= good:
            break
        ok, _ = fits(mid)
        tries.append((mid, ok))
        good, bad = (mid, bad) if ok else (good, mid)
    return good, why, tries


# ---------------------------------------------------------------- the CPU run


def plan() -> list[tuple]:
    """(loss, B, d, dtype): ours at 4k to 32k (24k at d = 1024), open_clip's at 2k to 8k (16k at
    d = 512 float32: about 5 GiB, under the per-process cap); about 12 CPU-minutes at one thread."""
    out = []
    for d, dtype in CONFIGS:
        for ours, theirs in OURS.items():
            out += [(ours, B, d, dtype) for B in (4096, 8192, 16384, 32768 if d == 512 else 24576)]
            out += [(theirs, B, d, dtype) for B in (2048, 4096, 8192, *((16384,) if (d, dtype) == (512, "float32")
                                                                          else ()))]
    return out


def in_fit(row) -> bool:
    """Ours are fitted above the batches whose logits the CPU forward keeps for its backward (a
    fixed KEEP_ELEMS budget: a step at B <= 4096, then O(B))."""
    from sdekernels.ops.contrastive import KEEP_ELEMS
    return row["ok"] and (row["loss"] not in OURS or row["B"] ** 2 > KEEP_ELEMS)


def fits_and_table(points) -> list[dict]:
    out = []
    for (loss, d, dtype), rows in itertools.groupby(sorted(points, key=lambda r: (LOSSES.index(r["loss"]), r["d"],
                                                                                  r["dtype"], r["B"])),
                                                    key=lambda r: (r["loss"], r["d"], r["dtype"])):
        used = [r for r in rows if in_fit(r)]
        if len(used) < 2:
            continue
        model = fit([r["B"] for r in used], [r["peak_bytes"] for r in used])
        out.append({"loss": loss, "d": d, "dtype": dtype, "model": model,
                    "max_B_derived": {f"{g} GiB": max_batch(model, g * GiB) for g in BUDGETS_GIB}})
    return out


def confirm(fits_) -> list[dict]:
    out = []
    for loss, budget in CONFIRM.items():
        f = next(f for f in fits_ if (f["loss"], f["d"], f["dtype"]) == (loss, 512, "float32"))
        B = max_batch(f["model"], budget) // 256 * 256
        for B_run, expect in ((B, True), (int(1.5 * B) // 256 * 256, False)):
            row = measure_in_process(loss, B_run, 512, "float32", budget=budget + SLACK)
            row.update(budget_bytes=budget, slack_bytes=SLACK, expected_ok=expect,
                       predicted_bytes=predict(f["model"], B_run))
            out.append(row)
            print(f"capped at {budget / 2**20:.0f} MiB: {loss} B={B_run}: {'fits' if row['ok'] else row['error']}",
                  flush=True)
    return out


def environment() -> dict:
    import importlib.metadata as md

    from sdekernels import bench
    from sdekernels.registry import all_ops

    files = tuple(sorted({os.path.relpath(__file__, ROOT), *all_ops()["info_nce"].sources(),
                          *all_ops()["siglip_loss"].sources()}))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"commit": bench.commit(files), "torch": torch.__version__, "open_clip": md.version("open_clip_torch"),
            "python": platform.python_version(), "machine": {"cpu": cpu, "memory_GiB": round(_mem_total() / GiB, 1),
                                                             "system": platform.platform()},
            "threads": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _mem_total() -> int:
    try:
        return next(int(x.split()[1]) * 1024 for x in open("/proc/meminfo") if x.startswith("MemTotal"))
    except (OSError, StopIteration):
        return 0


METHOD = ("Each point: one forward + backward (logit scale and bias learnable) in a fresh process with one "
          "thread, after an untimed call at 64 rows. peak_bytes: the allocator's peak during the call above "
          "what was allocated before (torch.profiler's allocation events, in order), inputs excluded and "
          "their gradients included; rss_peak_bytes: the process's peak RSS during the call above its RSS "
          "before (clear_refs, VmHWM); seconds: the call's CPU time, under the profiler. Fit: non-negative "
          "least squares of peak ≈ a + b·B + c·B² on relative residuals, ours on B > 4096 (at B <= 4096 the "
          "CPU forward keeps its logits for the backward: a fixed 64 MB budget). Growth: the exponent between the "
          "two largest points (O(B²) from 1.5). Derived: the largest B "
          "whose fitted peak is within the budget (GiB = 2^30 bytes), inputs not counted. Confirmed: a "
          "process whose address space (RLIMIT_AS) is capped at its size after setup plus the budget runs "
          "the fit's max B and 1.5x that, with glibc's mmap threshold fixed at 128 KiB "
          "(MALLOC_MMAP_THRESHOLD_): by default glibc raises the threshold after the first large frees and "
          "then keeps freed blocks of up to 32 MiB on its heap, and such a process needs more address space "
          "than the allocator's peak (info_nce at B = 8192, d = 512: a 112 MiB peak, not run in 128 MiB, "
          "run in 160 MiB), and 16 MiB of address space on top of the budget for what the allocator's peak "
          "does not count (the process's own mappings during the call; without it ours at the fit's max B for "
          "128 MiB, whose fitted peak is within 1 MiB of the budget, did not run; with it they did, at a peak "
          "RSS of 120 and 129 MiB).")


def run() -> dict:
    from tqdm import tqdm

    torch.set_num_threads(1)
    env = environment()
    partial = RECORD + ".partial"
    done = {}
    if os.path.exists(partial):  # points of an interrupted run at this same commit are kept
        with open(partial) as f:
            saved = json.load(f)
        if saved["commit"] == env["commit"] and not env["commit"].endswith("+dirty"):
            done = {(p["loss"], p["B"], p["d"], p["dtype"]): p for p in saved["points"]}
    points = []
    with tqdm(plan(), unit="point") as bar:
        for key in bar:
            bar.set_postfix_str("{} B={} d={} {}".format(*key))
            points.append(done.get(key) or measure_in_process(*key))
            with open(partial, "w") as f:
                json.dump({"commit": env["commit"], "points": points}, f)
    fits_ = fits_and_table(points)
    record = {"environment": env, "method": METHOD, "points": points, "fits": fits_,
              "inf_cl": "not measured on CPU: cal_inf_loss asserts CUDA tensors (a GPU stage: --gpu)",
              "confirmations": confirm(fits_)}
    with open(RECORD, "w") as f:
        json.dump(record, f, indent=1)
    os.remove(partial)
    render(record)
    return record


# ---------------------------------------------------------------- tables and plot


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:,.1f}"


def _b(v: int) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v:,}"


def _kinked(f) -> bool:
    """O(B) between the two largest points, yet a c·B² term in the fit: a phase kink (see fit)."""
    return f["model"]["order"] == "O(B)" and f["model"]["quadratic_share"] > 0.05


def _derived(f, fmt=lambda v: v) -> list[str]:
    return [("≥ " if _kinked(f) else "") + fmt(_b(v)) for v in f["max_B_derived"].values()]


def readme_table(record) -> str:
    lines = ["| loss | d | dtype | peak grows | " + " | ".join(f"max B, {g} GiB" for g in BUDGETS_GIB) + " |",
             "|---|---|---|---|" + "---|" * len(BUDGETS_GIB)]
    for f in record["fits"]:
        if f["d"] == 512:
            lines.append(f"| {f['loss']} | {f['d']} | {f['dtype']} | {f['model']['order']} | "
                         + " | ".join(_derived(f)) + " |")
    return "\n".join(lines)


def markdown(record) -> str:
    env = record["environment"]
    out = ["# Largest batch per memory budget (CPU, derived from measured peaks)\n",
           f"Measured at {env['commit'][:7]}, torch {env['torch']}, open_clip {env['open_clip']}, "
           f"{env['machine']['cpu']} ({env['machine']['memory_GiB']} GiB), one thread, {env['time']}. "
           f"Reproduce: `python benchmarks/maxbatch.py --run` (record: `results/maxbatch-cpu.json`, plot: "
           f"`results/maxbatch-cpu.png`); `--verify` re-measures one point per loss and compares its peak "
           f"with the record within {VERIFY_TOL:.0%}.\n", record["method"] + "\n",
           "Inf-CL: " + record["inf_cl"] + ".\n",
           "## Fits and the largest batch per budget (*derived* from the fit, not run)\n",
           "| loss | d | dtype | a (MiB) | b (KiB per row) | c (bytes per B²) | c·B² share at the largest B "
           "| exponent (two largest B) | grows | max rel. residual | "
           + " | ".join(f"max B, {g} GiB" for g in BUDGETS_GIB) + " |",
           "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(BUDGETS_GIB)]
    for f in record["fits"]:
        m = f["model"]
        out.append(f"| {f['loss']} | {f['d']} | {f['dtype']} | {m['a'] / 2**20:.1f} | {m['b'] / 1024:.2f} | "
                   f"{m['c']:.3g} | {m['quadratic_share']:.0%} | {m['exponent']:.2f} | {m['order']} | "
                   f"{m['max_rel_residual']:.1%} | "
                   + " | ".join(_derived(f, lambda v: f"*{v}*")) + " |")
    kinked = [f"{f['loss']} (d = {f['d']}, {f['dtype']})" for f in record["fits"] if _kinked(f)]
    if kinked:
        out.append("\nGrowing as O(B) between their two largest points but with a c·B² term in the fit: "
                   + ", ".join(kinked) + ". Their peak moves from one linear phase to a steeper one inside the "
                   "measured range (a fixed chunk workspace first, the O(B·d) buffers after), which the quadratic "
                   "reads as curvature: their derived max B are lower bounds (marked ≥).")
    at = record.get("confirmations_commit", env["commit"])[:7]
    out += [f"\n## Confirmed under a capped address space (d = 512, float32; run at {at})\n",
            "| loss | budget | B | fitted peak (MiB) | expected | result |", "|---|---|---|---|---|---|"]
    for c in record["confirmations"]:
        result = "ran" if c["ok"] else c["error"][:100]
        out.append(f"| {c['loss']} | {c['budget_bytes'] / 2**20:,.0f} MiB (+{c.get('slack_bytes', 0) / 2**20:.0f}) "
                   f"| {c['B']:,} | "
                   f"{c['predicted_bytes'] / 2**20:,.1f} | {'fits' if c['expected_ok'] else 'fails'} | {result} |")
    out += ["\n## Every measured point\n",
            "| loss | d | dtype | B | peak MiB (allocator) | peak RSS MiB | CPU s | in fit |",
            "|---|---|---|---|---|---|---|---|"]
    for p in record["points"]:
        out.append(f"| {p['loss']} | {p['d']} | {p['dtype']} | {p['B']:,} | "
                   + (f"{_mib(p['peak_bytes'])} | {_mib(p.get('rss_peak_bytes'))} | {p['seconds']:.1f} | "
                      f"{'yes' if in_fit(p) else 'no'} |" if p["ok"] else f"{p['error']} | | | no |"))
    return "\n".join(out) + "\n"


def plot(record, path=None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), sharex=True, sharey=True)
    colors = dict(zip(LOSSES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    grid = np.logspace(np.log10(1024), np.log10(4e6), 200)
    for ax, (d, dtype) in zip(axes.flat, CONFIGS):
        for f in (f for f in record["fits"] if (f["d"], f["dtype"]) == (d, dtype)):
            pts = [p for p in record["points"] if p["ok"] and (p["loss"], p["d"], p["dtype"]) == (f["loss"], d, dtype)]
            ax.loglog([p["B"] for p in pts], [p["peak_bytes"] / GiB for p in pts], "o", color=colors[f["loss"]])
            ax.loglog(grid, [predict(f["model"], B) / GiB for B in grid], "-", color=colors[f["loss"]], lw=1,
                      label=f"{f['loss']} ({f['model']['order']})")
        for g in BUDGETS_GIB:
            ax.axhline(g, color="0.6", ls=":", lw=0.8)
            ax.text(1100, g * 1.08, f"{g} GiB", fontsize=7, color="0.4")
        ax.set_title(f"d = {d}, {dtype}", fontsize=10)
        ax.set_ylim(5e-3, 400)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes[1]:
        ax.set_xlabel("batch B")
    for ax in axes[:, 0]:
        ax.set_ylabel("peak memory of forward + backward (GiB)")
    fig.suptitle("Peak memory vs batch (CPU, measured points, fitted a + b·B + c·B², budgets dotted)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path or PLOT, dpi=110)
    plt.close(fig)


def render(record) -> None:
    with open(TABLE, "w") as f:
        f.write(markdown(record))
    with open(README) as f:
        text = f.read()
    if not MARKED.search(text):
        raise SystemExit("README.md: no <!-- maxbatch-table --> ... <!-- /maxbatch-table --> markers")
    with open(README, "w") as f:
        f.write(MARKED.sub(lambda m: m.group(1) + readme_table(record) + "\n" + m.group(2), text))
    plot(record)


def verify(record) -> int:
    """One point per loss (the median B of its d = 512 float32 fit) again; its peak against the record."""
    bad = 0
    for loss in (*OURS, *OURS.values()):
        pts = [p for p in record["points"] if (p["loss"], p["d"], p["dtype"]) == (loss, 512, "float32") and in_fit(p)]
        old = pts[len(pts) // 2 - 1] if len(pts) > 1 else pts[0]
        new = measure_in_process(loss, old["B"], 512, "float32")
        rel = new["peak_bytes"] / old["peak_bytes"] - 1 if new["ok"] else float("inf")
        bad += abs(rel) > VERIFY_TOL
        print(f"{loss} B={old['B']}: {_mib(new.get('peak_bytes'))} MiB now, {_mib(old['peak_bytes'])} MiB recorded "
              f"({rel:+.2%}; tolerance {VERIFY_TOL:.0%}) {'ok' if abs(rel) <= VERIFY_TOL else 'DIFFERS'}")
    return 1 if bad else 0


# ---------------------------------------------------------------- the GPU stage


def gpu(out: str, dry: bool, limit_s: float) -> int:
    """The search of each (loss, d, dtype) on this device's memory, the JSON rewritten after each.
    --dry: on the CPU, a tiny d and a fake budget (the search and the file, not the figures)."""
    from sdekernels import bench

    device = torch.device("cpu" if dry else "cuda")
    path = os.path.join(out, "maxbatch-gpu.json")
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 16 * 2**20
    data = {"environment": {"commit": bench.commit(), "torch": torch.__version__, "device": bench.device_name(device),
                            "total_memory_bytes": total}, "method": "torch.cuda.max_memory_allocated; a B fits "
            "when its forward + backward raises no out-of-memory error and its peak is within the device's memory; "
            f"doubling from 4096, then bisecting to 1024 rows; stopped where one call takes over {limit_s} s",
            "rows": []}
    configs = [(32, "float32")] if dry else [(512, "bfloat16"), (512, "float32"), (1024, "bfloat16"), (1024, "float32")]
    lo, hi, quantum = (64, 4096, 64) if dry else (4096, 2**23, 1024)
    status = 0
    for (d, dtype), loss in itertools.product(configs, LOSSES):
        try:
            loss_fn(loss)
        except ImportError as e:
            data["rows"].append({"loss": loss, "d": d, "dtype": dtype, "skipped": str(e)})
            _write(path, data)
            continue

        def fits(B, loss=loss, d=d, dtype=dtype):
            r = measure(loss, B, d, dtype, device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return r["ok"] and r["peak_bytes"] <= total, r.get("seconds", 0.0) > limit_s

        try:
            B, why, tries = search(fits, lo, hi, quantum)
        except Exception as e:  # one loss that breaks must not lose the others
            data["rows"].append({"loss": loss, "d": d, "dtype": dtype, "error": f"{type(e).__name__}: {e}"[:300]})
            status = 1
        else:
            data["rows"].append({"loss": loss, "d": d, "dtype": dtype, "max_B": B, "stopped_by": why, "tries": tries})
        _write(path, data)
    return status


def _write(path: str, data: dict) -> None:
    print(json.dumps(data["rows"][-1]), flush=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", action="store_true", help="measure every point, fit, confirm, write the record")
    g.add_argument("--render", action="store_true", help="the tables and the plot from the record")
    g.add_argument("--confirm", action="store_true", help="the capped confirmations again, into the record")
    g.add_argument("--verify", action="store_true", help="one point per loss against the record")
    g.add_argument("--gpu", metavar="OUTDIR", help="the search on the GPU's memory, into OUTDIR/maxbatch-gpu.json")
    g.add_argument("--point", nargs=4, metavar=("LOSS", "B", "D", "DTYPE"), help="one measure() as a JSON line")
    p.add_argument("--budget", type=int, help="--point: bytes of address space beyond the process's after setup")
    p.add_argument("--dry", action="store_true", help="--gpu on the CPU with tiny settings")
    p.add_argument("--limit-s", type=float, default=3.0, help="--gpu: stop doubling after a call this long")
    args = p.parse_args()
    if args.point:
        torch.set_num_threads(1)
        loss, B, d, dtype = args.point
        print(json.dumps(measure(loss, int(B), int(d), dtype, budget=args.budget)))
        return 0
    if args.gpu:
        os.makedirs(args.gpu, exist_ok=True)
        return gpu(args.gpu, args.dry, args.limit_s)
    if args.run:
        run()
        return 0
    with open(RECORD) as f:
        record = json.load(f)
    if args.render:
        record["fits"] = fits_and_table(record["points"])  # derived from the points: no measurement
        record["method"] = METHOD
        with open(RECORD, "w") as f:
            json.dump(record, f, indent=1)
        render(record)
        return 0
    if args.confirm:
        record["confirmations"] = confirm(record["fits"])
        record["confirmations_commit"] = environment()["commit"]
        record["method"] = METHOD
        with open(RECORD, "w") as f:
            json.dump(record, f, indent=1)
        render(record)
        return 0
    return verify(record)


if __name__ == "__main__":
    sys.exit(main())
