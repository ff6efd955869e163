"""The bench table: for every registered op and bench shape, the reference, our op and any
baselines timed in the same run, with peak memory, achieved GB/s and FLOP/s; and `compare`, the
same timing loop for the named closures of the scripts under benchmarks/."""
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time

import pytest
import torch

from .registry import Sample, Tuned, all_ops, flat

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


def peak_memory(fn, device, setup=None) -> int:
    """Peak bytes allocated while `fn()` runs, above what was allocated before (with `setup`: fn(*args,
    **kwargs) of setup()'s (args, kwargs), setup's own allocations not counted)."""
    args, kwargs = setup() if setup else ((), {})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args, **kwargs)
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


# ---------------------------------------------------------------- the cases and their timing
#
# One timing loop: pytest-benchmark's pedantic, through `timed_rounds`, for the registry's cases
# (`bench_case`: benchmarks/test_ops.py and `python -m sdekernels bench`, which runs pytest on this
# module) and for the scripts' closures (`compare`, the same loop on pytest, one case per closure).
# Everything below prepares what it times: the cases from the registry, one closure per mode, the
# clock, the memory measurement.

MODES = ("fwd", "bwd", "full")
SIZES = ("quick", "bench", "tiny")
COMPILED = "reference (compiled)"
L2_FLUSH_BYTES = 256 * 2**20  # above the L2 of every GPU we target (H100 50 MB, H200 60 MB)


def _label(shape: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in shape.items() if k not in ("quick", "backward"))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "_" for c in text).strip("_")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: an op at one shape, one provider (sdekernels, the reference, its compiled form
    or a named baseline), one mode (fwd, bwd: the backward alone after its own forward, or full)."""
    op: str
    shape: tuple  # the shape dict's items (hashable)
    provider: str
    mode: str

    @property
    def label(self) -> str:
        return _label(dict(self.shape))

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}-{_slug(self.provider)}-{self.mode}"


def modes_of(info, shape: dict) -> tuple:
    """fwd, bwd and full where the shape times the backward, else fwd (under no_grad)."""
    return MODES if shape.get("backward") and info.differentiable else ("fwd",)


def tiny_shape(info) -> dict:
    """The op's typical test shape: the smoke test's size, every mode where the op has a backward."""
    return {**info.typical_shape, "backward": info.differentiable}


def cases(names=None, *, size: str = "quick", compile_ref: bool = True, shapes=None, modes=None,
          providers=None) -> list[Case]:
    """The cases of the registry, op by op, shape by shape, each shape's providers and modes together.
    size: "quick" (the shapes marked quick), "bench" (every bench shape) or "tiny" (the typical test
    shape); shapes: label prefixes to keep; modes, providers: subsets to keep."""
    ops = all_ops()
    unknown = set(names or ()) - set(ops)
    if unknown:
        raise ValueError(f"unknown op(s) {sorted(unknown)}; registered: {sorted(ops)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    out = []
    for name, info in sorted(ops.items()):
        if names and name not in names:
            continue
        todo = [tiny_shape(info)] if size == "tiny" else [s for s in info.bench if size == "bench" or s.get("quick")]
        with_bwd, seen = {_label(s) for s in todo if len(modes_of(info, s)) > 1}, set()
        for shape in todo:
            if len(modes_of(info, shape)) == 1 and _label(shape) in with_bwd or _label(shape) in seen:
                continue  # its forward is timed with the backward shape of the same size, or listed twice
            seen.add(_label(shape))
            if shapes and not any(_label(shape).startswith(p) for p in shapes):
                continue
            provs = ["sdekernels", "reference", *([COMPILED] if compile_ref else []), *info.baselines]
            for provider in provs:
                if providers and provider not in providers:
                    continue
                for mode in modes_of(info, shape):
                    if not modes or mode in modes:
                        out.append(Case(name, tuple(shape.items()), provider, mode))
    return out


@functools.lru_cache(maxsize=1)
def _sample(op: str, shape: tuple, device: str, dtype: torch.dtype) -> Sample:
    """The case's inputs (one case's at a time in memory: the providers and modes of a shape run together)."""
    info = all_ops()[op]
    made = info.make(dict(shape), torch.device(device), dtype, torch.Generator().manual_seed(0))
    return Sample(*made.prepared())


_COMPILED: dict = {}
_TUNED: dict = {}


def provider_fn(info, provider: str, sample: Sample, key=None):
    """(function, knob value or None) of a provider; a Tuned baseline is resolved on the sample (once per key)."""
    if provider == "sdekernels":
        return info.op, None
    if provider == "reference":
        return info.ref, None
    if provider == COMPILED:
        if info.name not in _COMPILED:
            _COMPILED[info.name] = torch.compile(info.ref)
        return _COMPILED[info.name], None
    base = info.baselines[provider]
    if isinstance(base, Tuned):
        if key not in _TUNED:
            _TUNED[key] = base.resolve(sample)
        return _TUNED[key]
    return base, None


def closures(info, fn, sample: Sample, mode: str, device):
    """(setup, target) for pytest-benchmark's pedantic: setup (untimed) returns target's arguments.
    fwd: the call (under no_grad unless the shape times a backward: then with autograd recording, what a
    training step's forward costs); bwd: setup runs the forward and the loss, target the backward
    alone; full: forward and backward. The loss is sum(output · w) with fixed random w."""
    flush = _l2_flusher(device)
    weights = None

    def loss_of(leaves):
        nonlocal weights
        outs = [t for t in flat(leaves.call(fn)) if t.is_floating_point()]
        if weights is None:
            gen = torch.Generator().manual_seed(0)
            weights = [torch.randn(t.shape, generator=gen).to(t.device, t.dtype) for t in outs]
        return sum((o * w).sum() for o, w in zip(outs, weights))

    if mode == "fwd":
        def setup():
            flush()
            return (info.leaves(sample),), {}

        def target(leaves):
            return leaves.call(fn)
        return setup, target
    if mode == "bwd":
        def setup():
            loss = loss_of(info.leaves(sample))
            flush()
            return (loss,), {}

        def target(loss):
            loss.backward()
        return setup, target

    def setup_full():
        flush()
        return (info.leaves(sample),), {}

    def full(leaves):
        loss_of(leaves).backward()
    return setup_full, full


def _l2_flusher(device):
    """On CUDA, a closure that overwrites a buffer larger than L2 (so no repeat finds its inputs
    cached, the pitfall of timing a kernel in a loop); elsewhere a no-op."""
    if device.type != "cuda":
        return lambda: None
    buf = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return buf.zero_


class CudaClock:
    """Seconds since its creation by CUDA events: reading it records an event on the current stream
    and waits for it, so a duration between two readings is the device's time for the work enqueued
    between them (launch overhead included, host time between launches included)."""
    __name__ = "CudaClock"

    def __init__(self, device=None):
        self.origin = torch.cuda.Event(enable_timing=True)
        self.origin.record()

    def __call__(self) -> float:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        e.synchronize()
        return self.origin.elapsed_time(e) / 1e3


def clock(device, cpu_time: bool = False):
    """The timer of a run: CUDA events on a GPU; on CPU the wall clock, or the process's CPU time
    (cpu_time: on a shared, loaded machine, with one thread)."""
    if device.type == "cuda":
        return CudaClock(device)
    if cpu_time and torch.get_num_threads() != 1:
        raise ValueError("cpu_time needs one thread (torch.set_num_threads(1)): it sums the CPU time of all threads")
    return time.process_time if cpu_time else time.perf_counter


def lockstep(step, setup, rounds: int, sync, device=None) -> list[float]:
    """Seconds of each of `rounds` calls step(*args) with setup()'s untimed args, each after sync() (a
    barrier): the loop of a multi-process run, where every rank must make the same calls in the same
    order, so rounds are fixed, not sized to a budget as timed_rounds sizes them."""
    timer = clock(device or torch.device("cpu"))
    out = []
    for _ in range(rounds):
        args = setup()
        sync()
        t0 = timer()
        step(*args)
        out.append(timer() - t0)
    return out


def rounds_for(first_s: float, budget_s: float, lo: int = 5, hi: int = 31) -> int:
    return max(lo, min(hi, int(budget_s / max(first_s, 1e-9))))


def timed_rounds(benchmark, setup, target, timer, *, budget_s: float = 3.0, max_rounds: int = 31,
                 warmup_s: float = 0.0, grad: bool = True) -> dict:
    """The project's timing loop: target(*args, **kwargs) of setup()'s untimed (args, kwargs), by
    pytest-benchmark's pedantic with `timer`. The first call (torch.compile, Triton's autotuning and
    compilation, first allocations) is timed alone and reported as first_call_s, apart from the runs;
    the second sizes the rounds to budget_s (5 to max_rounds). Then warm-up rounds (at least one,
    more until warmup_s has passed: on a GPU long enough for clocks and caches to settle), then the
    timed rounds. Returns first_call_s and p20_s, p50_s, p80_s of the rounds."""
    def once():
        args, kwargs = setup()
        t0 = timer()
        with torch.set_grad_enabled(grad):
            target(*args, **kwargs)
        return timer() - t0

    first = once()
    second = once()
    warm, spent = 1, second
    while spent < warmup_s:
        spent += once()
        warm += 1

    def run(*args, **kwargs):
        with torch.set_grad_enabled(grad):
            return target(*args, **kwargs)

    benchmark.pedantic(run, setup=setup, rounds=rounds_for(second, budget_s, hi=max_rounds), warmup_rounds=warm)
    data = sorted(benchmark.stats.stats.data)
    return {"first_call_s": first, **{f"p{q}_s": _quantile(data, q / 100) for q in (20, 50, 80)}}


def bench_case(benchmark, case: Case, *, device, dtype, timer, budget_s: float = 3.0, max_rounds: int = 31,
               warmup_s: float = 0.0):
    """Time one case with timed_rounds and fill benchmark.extra_info. Each round runs after an
    untimed setup (fresh leaves, the forward of bwd, and on CUDA an L2 flush)."""
    info = all_ops()[case.op]
    sample = _sample(case.op, case.shape, str(device), dtype)
    fn, knob = provider_fn(info, case.provider, sample, key=(case.op, case.shape, str(device), dtype, case.provider))
    setup, target = closures(info, fn, sample, case.mode, device)
    grad = bool(info.differentiable and case.mode != "fwd" or dict(case.shape).get("backward"))
    stats = timed_rounds(benchmark, setup, target, timer, budget_s=budget_s, max_rounds=max_rounds,
                         warmup_s=warmup_s, grad=grad)

    def run(*args, **kwargs):
        with torch.set_grad_enabled(grad):
            return target(*args, **kwargs)

    nbytes, flops = info.cost(sample)
    scale = {"fwd": 1, "bwd": 2, "full": 3}[case.mode]  # a backward reads and writes about twice the forward
    benchmark.extra_info.update(
        op=case.op, shape=case.label, provider=case.provider, mode=case.mode, dtype=str(dtype).replace("torch.", ""),
        device=device_name(device), commit=commit(tuple(info.sources())), op_commit=op_commit(info),
        peak_bytes=peak_memory(run, device, setup), **stats, bytes=scale * nbytes, flops=scale * flops,
        **({info.baselines[case.provider].knob: knob} if knob is not None else {}))


def _quantile(sorted_data, q: float) -> float:
    """Linear-interpolation quantile of sorted data (numpy's default)."""
    pos = q * (len(sorted_data) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_data) - 1)
    return sorted_data[lo] + (sorted_data[hi] - sorted_data[lo]) * (pos - lo)


def device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=ROOT)
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@functools.cache
def commit(files: tuple = ()) -> str:
    """HEAD, with "+dirty" when the timing code (this file) or one of `files` differs from it: then
    the row measured code that no commit has."""
    head = _git("rev-parse", "HEAD") or os.environ.get("SDEKERNELS_COMMIT", "")
    changed = head and _git("status", "--porcelain", "--untracked-files=no", "--",
                            os.path.relpath(__file__, ROOT), *files)
    return head + ("+dirty" if changed else "")


def op_commit(info) -> str:
    """The last commit that changed the op's code (OpInfo.sources), or "" outside a git checkout."""
    return _sources_commit(tuple(info.sources()))


@functools.cache
def _sources_commit(files: tuple) -> str:
    return _git("log", "-1", "--format=%H", "--", *files)


# ---------------------------------------------------------------- pytest glue


class Plugin:
    """The bench's pytest options and parametrisation (benchmarks/conftest.py installs these hooks;
    `python -m sdekernels bench` passes this class to pytest.main as a plugin)."""

    @staticmethod
    def pytest_addoption(parser):
        g = parser.getgroup("sdekernels bench")
        g.addoption("--bench-size", default=None, choices=SIZES,
                    help="quick shapes, every bench shape, or the tiny typical test shape "
                         "(default: bench on a GPU, quick on CPU)")
        g.addoption("--bench-op", action="append", help="only this op (repeatable)")
        g.addoption("--bench-shape", action="append", help="only shapes whose label starts with this")
        g.addoption("--bench-mode", action="append", choices=MODES, help="only this mode (repeatable)")
        g.addoption("--bench-provider", action="append", help="only this provider (repeatable)")
        g.addoption("--bench-no-compile", action="store_true", help="leave out the compiled reference")
        g.addoption("--bench-device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
        g.addoption("--bench-dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
        g.addoption("--bench-cpu-time", action="store_true",
                    help="time by the process's CPU time (CPU, one thread: a shared, loaded machine)")
        g.addoption("--bench-threads", type=int, help="torch.set_num_threads first")
        g.addoption("--bench-budget", type=float, default=3.0, help="seconds of timed rounds per case (5 to 31)")

    @staticmethod
    def pytest_generate_tests(metafunc):
        if "case" not in metafunc.fixturenames:
            return
        opt = metafunc.config.getoption
        device = _device(opt("bench_device"))
        if opt("bench_threads"):
            torch.set_num_threads(opt("bench_threads"))
        size = opt("bench_size") or ("bench" if device.type == "cuda" else "quick")
        todo = cases(opt("bench_op"), size=size, compile_ref=not opt("bench_no_compile"), shapes=opt("bench_shape"),
                     modes=opt("bench_mode"), providers=opt("bench_provider"))
        timer = clock(device, opt("bench_cpu_time"))
        metafunc.parametrize("case", [
            pytest.param(c, id=c.id, marks=pytest.mark.benchmark(group=f"{c.op}-{c.label}-{c.mode}", timer=timer))
            for c in todo])


def _device(name):
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def test_bench(benchmark, case, request):
    """One case of the bench (collected from benchmarks/ or by `python -m sdekernels bench`)."""
    opt = request.config.getoption
    device = _device(opt("bench_device"))
    timer = request.node.get_closest_marker("benchmark").kwargs["timer"]
    bench_case(benchmark, case, device=device, dtype=getattr(torch, opt("bench_dtype")), timer=timer,
               budget_s=opt("bench_budget"), warmup_s=0.5 if device.type == "cuda" else 0.0)


# ---------------------------------------------------------------- the front end: pytest, then rows


def run(names=None, *, size="quick", device=None, dtype="float32", compile_ref=True, cpu_time=False, threads=None,
        shapes=None, modes=None, providers=None, budget_s=3.0, json_path=None, quiet=True, extra_args=()) -> dict:
    """Run the bench through pytest-benchmark (this module's test_bench, in this process) and return
    its JSON (machine_info, commit_info, benchmarks with extra_info). Raises RuntimeError when a case
    fails."""
    args = [f"{os.path.abspath(__file__)}::test_bench", "-p", "no:cacheprovider", "--benchmark-only",
            "-o", "python_files=*.py", "--bench-size", size, "--bench-dtype", str(dtype).replace("torch.", ""),
            "--bench-budget", str(budget_s)]
    args += ["-q", "--benchmark-disable-gc"] if quiet else []
    for flag, values in (("--bench-op", names), ("--bench-shape", shapes), ("--bench-mode", modes),
                         ("--bench-provider", providers)):
        for v in values or ():
            args += [flag, v]
    args += ["--bench-device", str(device)] if device else []
    args += ["--bench-no-compile"] if not compile_ref else []
    args += ["--bench-cpu-time"] if cpu_time else []
    args += ["--bench-threads", str(threads)] if threads else []
    return _pytest_json([*args, *extra_args], Plugin, json_path)


def _pytest_json(args: list, plugin, json_path=None) -> dict:
    """pytest.main(args) in this process with `plugin`, and the pytest-benchmark JSON it wrote."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = json_path or os.path.join(tmp, "bench.json")
        # A bench started from inside a pytest-xdist worker (a test that runs it) inherits the worker's
        # marker, which pytest-benchmark reads as "xdist is on" and then disables every benchmark.
        worker = os.environ.pop("PYTEST_XDIST_WORKER", None)
        try:
            code = pytest.main([*args, f"--benchmark-json={out}"], plugins=[plugin])
        finally:
            if worker is not None:
                os.environ["PYTEST_XDIST_WORKER"] = worker
        if code not in (0,):
            raise RuntimeError(f"the bench failed (pytest exit code {int(code)})")
        with open(out) as f:
            return json.load(f)


class _Closures:
    """compare()'s pytest plugin: test_closure once per named closure, on compare's timer."""

    def __init__(self, fns: dict, timer, device, budget_s: float, warmup_s: float):
        self.fns, self.timer, self.device, self.budget_s, self.warmup_s = fns, timer, device, budget_s, warmup_s

    def pytest_generate_tests(self, metafunc):
        if "closure" in metafunc.fixturenames:
            mark = pytest.mark.benchmark(group="compare", timer=self.timer)
            metafunc.parametrize("closure", [pytest.param(name, id=f"{i}-{_slug(name)}", marks=mark)
                                             for i, name in enumerate(self.fns)])


def test_closure(benchmark, closure, request):
    """One closure of compare() (collected only by compare, which names this test)."""
    plugin = next(p for p in request.config.pluginmanager.get_plugins() if isinstance(p, _Closures))
    flush = _l2_flusher(plugin.device)

    def setup():
        flush()
        return (), {}

    stats = timed_rounds(benchmark, setup, plugin.fns[closure], plugin.timer, budget_s=plugin.budget_s,
                         warmup_s=plugin.warmup_s)
    benchmark.extra_info.update(name=closure, device=device_name(plugin.device), **stats)


def compare(fns: dict, *, device=None, cpu_time: bool = False, budget_s: float = 3.0, quiet: bool = True) -> dict:
    """Time each fns[name]() (no arguments; the name is free text) with the bench's own loop
    (timed_rounds through pytest-benchmark: first call apart, warm-up, rounds sized to budget_s; on
    CUDA, CUDA events and an L2 flush before each round), one closure after another. Returns per
    name: ms (the median), ms_q1, ms_q3, first_call_ms and runs. cpu_time: the process's CPU time
    (CPU, one thread)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    plugin = _Closures(dict(fns), clock(device, cpu_time), device, budget_s,
                       0.5 if device.type == "cuda" else 0.0)
    args = [f"{os.path.abspath(__file__)}::test_closure", "-p", "no:cacheprovider", "--benchmark-only",
            "-o", "python_files=*.py", *(["-q", "--benchmark-disable-gc"] if quiet else [])]
    data = _pytest_json(args, plugin)
    out = {}
    for b in data["benchmarks"]:
        st = b["stats"]
        out[b["extra_info"]["name"]] = {"ms": 1e3 * st["median"], "ms_q1": 1e3 * st["q1"], "ms_q3": 1e3 * st["q3"],
                                        "first_call_ms": 1e3 * b["extra_info"]["first_call_s"], "runs": st["rounds"]}
    return {name: out[name] for name in fns}


def rows(data: dict) -> list[dict]:
    """One row per benchmark of a pytest-benchmark JSON, in milliseconds and MB, with the ratios of
    each (op, shape, mode): speedup (the reference's median over ours), vs_compiled (the compiled
    reference's), vs_best (the fastest of every other provider's, named in best_alternative)."""
    out = []
    for b in data["benchmarks"]:
        e, st = b["extra_info"], b["stats"]
        r = {"op": e["op"], "shape": e["shape"], "mode": e["mode"], "impl": e["provider"], "dtype": e["dtype"],
             "device": e["device"], "ms": 1e3 * st["median"], "ms_q1": 1e3 * st["q1"], "ms_q3": 1e3 * st["q3"],
             "ms_p20": 1e3 * e["p20_s"], "ms_p80": 1e3 * e["p80_s"], "runs": st["rounds"],
             "first_call_ms": 1e3 * e["first_call_s"], "peak_MB": e["peak_bytes"] / 2**20,
             "GBs": e["bytes"] / st["median"] / 1e9, "TFLOPs": e["flops"] / st["median"] / 1e12,
             "commit": e["commit"], "op_commit": e["op_commit"], "timer": b["options"].get("timer")}
        r.update({k: v for k, v in e.items() if k == "niter"})
        out.append(r)
    return with_ratios(out)


def with_ratios(rs: list[dict]) -> list[dict]:
    groups = {}
    for r in rs:
        groups.setdefault((r["op"], r["shape"], r["mode"]), {})[r["impl"]] = r
    for impls in groups.values():
        ours = impls.get("sdekernels")
        for k in ("speedup", "vs_compiled", "vs_best", "best_alternative"):
            for r in impls.values():
                r.pop(k, None)
        if not ours:
            continue
        for r in impls.values():
            if "reference" in impls:
                r["speedup"] = impls["reference"]["ms"] / r["ms"]
        if COMPILED in impls:
            ours["vs_compiled"] = impls[COMPILED]["ms"] / ours["ms"]
        others = [i for i in impls if i != "sdekernels"]
        if others:
            best = min(others, key=lambda i: impls[i]["ms"])
            ours["vs_best"], ours["best_alternative"] = impls[best]["ms"] / ours["ms"], best
    return rs


def environment(data: dict | None = None) -> dict:
    from . import __version__, _core, _ext
    tri = None
    if _core.HAS_TRITON:
        import triton
        tri = triton.__version__
    env = {"sdekernels": __version__, "torch": torch.__version__, "cuda": torch.version.cuda, "triton": tri,
           "python": platform.python_version(), "extension": _ext.status(), "commit": commit(),
           "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if data:
        env["machine"] = {k: data["machine_info"].get(k) for k in ("node", "processor", "machine", "python_version")}
    return env


_LABELS = {"vs_compiled": "vs compiled ref", "vs_best": "vs best alternative"}


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and math.isfinite(v) else ("-" if isinstance(v, float) else str(v))


def table(rs) -> str:
    cols = ["op", "shape", "mode", "impl", "ms", "first_call_ms", "speedup", "vs_compiled", "vs_best", "peak_MB",
            "GBs", "TFLOPs"]
    cells = [[_LABELS.get(c, c) for c in cols]]
    cells += [[_fmt(r.get(c, "")) for c in cols] for r in rs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def headline(rs) -> list[dict]:
    """Per (op, shape) the rows of one mode: full where the shape times a backward, else fwd."""
    full = {(r["op"], r["shape"]) for r in rs if r["mode"] == "full"}
    return [r for r in rs if r["mode"] == ("full" if (r["op"], r["shape"]) in full else "fwd")]


def _short(commit_: str) -> str:
    return commit_[:7] + ("+dirty" if commit_.endswith("+dirty") else "")


def markdown(rs) -> str:
    """One line per (op, shape, mode): our time with its quartiles, the reference's and the best
    alternative's, the ratios of medians against each, peak memory, and the commit the row was
    measured at."""
    head = ("| op | shape | mode | sdekernels ms (quartiles) | reference ms | best alternative (ms) | vs reference "
            "| vs compiled ref | vs best alternative | peak MB (ours / ref) | measured at |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    by_case = {}
    for r in rs:
        by_case.setdefault((r["op"], r["shape"], r["mode"]), {})[r["impl"]] = r
    x = lambda v: f"{v:.2f}x" if isinstance(v, float) and math.isfinite(v) else "-"  # noqa: E731
    for (op, shape, mode), impls in by_case.items():
        ours, ref = impls.get("sdekernels", {}), impls.get("reference", {})
        if "ms" not in ours:
            continue
        alt = ours.get("best_alternative", "-")
        alt_name = f"{alt} (niter={impls[alt]['niter']})" if "niter" in impls.get(alt, {}) else alt
        best = impls.get(alt, {})
        lines.append(
            f"| {op} | {shape} | {mode} | {_fmt(ours['ms'])} ({_fmt(ours['ms_q1'])}–{_fmt(ours['ms_q3'])}) "
            f"| {_fmt(ref.get('ms', float('nan')))} | {alt_name} ({_fmt(best.get('ms', float('nan')))}) "
            f"| {x(ours.get('speedup'))} | {x(ours.get('vs_compiled'))} | **{x(ours.get('vs_best'))}** "
            f"| {_fmt(ours['peak_MB'])} / {_fmt(ref.get('peak_MB', float('nan')))} | {_short(ours['commit'])} |")
    return "\n".join(lines)


CSV_COLUMNS = ["kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name",
               "x_value", "y_value_20", "y_value_50", "y_value_80", "dtype", "device", "version", "commit"]


def csv_rows(rs) -> list[dict]:
    """Liger-Kernel's benchmark columns: per row a speed line (ms at p20/p50/p80) and a memory line
    (peak MB, one measurement: the three equal). x is the shape label."""
    from . import __version__
    out = []
    for r in rs:
        base = {"kernel_name": r["op"], "kernel_provider": r["impl"], "kernel_operation_mode": r["mode"],
                "x_name": "shape", "x_value": r["shape"], "dtype": r["dtype"], "device": r.get("device", ""),
                "version": __version__, "commit": r.get("commit", "")}
        out.append({**base, "metric_name": "speed", "metric_unit": "ms", "y_value_20": r["ms_p20"],
                    "y_value_50": r["ms"], "y_value_80": r["ms_p80"]})
        out.append({**base, "metric_name": "memory", "metric_unit": "MB", "y_value_20": r["peak_MB"],
                    "y_value_50": r["peak_MB"], "y_value_80": r["peak_MB"]})
    return out


def write_csv(path: str, rs) -> None:
    import csv
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_COLUMNS)
        w.writeheader()
        w.writerows(csv_rows(rs))


def plot(rs, path: str, title: str = "") -> None:
    """Bar chart of the speedup over the reference of every implementation, per op, shape and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases_ = list(dict.fromkeys((r["op"], r["shape"], r["mode"]) for r in rs))
    impls = [i for i in dict.fromkeys(r["impl"] for r in rs) if i != "reference"]
    speed = {(r["op"], r["shape"], r["mode"], r["impl"]): r.get("speedup", float("nan")) for r in rs}
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(cases_) + 2), 4.5))
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        ax.bar([i + j * width for i in range(len(cases_))], [speed.get((*c, impl), float("nan")) for c in cases_],
               width, label=impl)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speedup over the reference (log)")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases_))])
    ax.set_xticklabels([f"{o}\n{s}\n{p}" for o, s, p in cases_], fontsize=6, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
