"""`python -m sdekernels aot`: every Triton kernel compiled for a GPU, on a machine without one.

The specialisations are the ones the ops really launch. Every registry op runs at its bench (or
test) shapes, in every dtype it is tested in, on CPU, with each Triton launch recorded instead of
run: the host launchers choose grids, tiles, warps and dtypes as they would (their CUDA choices,
through `_core.emulate_cuda`), and Triton's own binder turns the arguments into the signature,
constexprs and alignment attributes it would compile on the GPU. The ops run on fake tensors (no
storage: any size costs nothing); where host code reads data, on real tensors of zeros, the
recorded kernels' outputs zeroed too. An op whose launches depend on its data (svd_topk's solvers,
spectral_enhance's rank) lists data regimes in its registry entry: it runs once per regime on data
that takes that path, and a kernel with a host equivalent (its `host` attribute) has its result
computed, so the host code after it sees the numbers a GPU would give it.
Each distinct specialisation is then compiled for the target (`triton.compile`): registers, stack
frame, spill bytes and shared memory from ptxas's -v log (rerun on the PTX of a kernel from the
Triton cache, so the report is the same cold or warm) checked against cuobjdump's reading of the
cubin, and each tl.dot with the tensor-core instructions (`wgmma`/`mma`) its source position
became in the PTX, or none: FMA.
"""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from . import _core
from ._torch import fake_mode, is_fake, real_bodies_on_fakes
from .registry import Sample, all_ops, flat

SHARED_LIMIT = 227 * 1024  # bytes of shared memory one block may use on Hopper


@dataclass
class Spec:
    """One distinct specialisation of a kernel and the (op, shape, dtype) cases that launch it."""
    fn: object                  # the JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: object             # the backend's options (num_warps, num_stages, ...)
    cases: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.fn.__name__

    def key(self) -> str:
        return repr((self.fn.fn.__module__, self.name, self.signature, sorted(self.constexprs.items()),
                     sorted(self.attrs.items()), self.options))

    def dtype(self) -> str:
        """The element types of the kernel's pointer arguments, in order of first use."""
        types = [t[1:] for t in self.signature.values() if isinstance(t, str) and t.startswith("*")]
        return ",".join(dict.fromkeys(types))

    def div16(self) -> str:
        """The integer arguments Triton specialised as multiples of 16 (they change the code)."""
        names = self.fn.arg_names
        return ",".join(names[k[0]] for k, v in self.attrs.items()
                        if v and not str(self.signature.get(names[k[0]], "")).startswith("*"))

    def constants(self) -> str:
        names = self.fn.arg_names
        return " ".join(f"{names[k[0]] if isinstance(k, tuple) else k}={_short(v)}" for k, v in self.constexprs.items())


def _short(v) -> str:
    s = str(v)
    return s[len("triton.language."):] if s.startswith("triton.language.") else s


class _Ptr:
    """What Triton's binder reads of a pointer argument (dtype, address) for a tensor without
    storage: allocations are taken as 256-byte aligned, plus the view's offset."""

    def __init__(self, t: torch.Tensor):
        self.dtype, self.ptr = t.dtype, 256 + t.storage_offset() * t.element_size()

    def data_ptr(self) -> int:
        return self.ptr


class _Recorder:
    """Stands in for `JITFunction.run`: binds the arguments as Triton would for `target` and keeps
    the specialisation. Nothing is launched: on real tensors a kernel's host equivalent (its `host`
    attribute, where it has one) computes its result, else its tensor arguments are zeroed, so that
    what follows stays finite."""

    def __init__(self, target):
        from triton.compiler import make_backend

        self.target = target
        self.backend = make_backend(target)
        self.binders = {}
        self.specs: dict[str, Spec] = {}
        self.case = None

    def bind(self, fn, args, kwargs):
        from triton.runtime.jit import create_function_from_signature

        if fn not in self.binders:
            self.binders[fn] = create_function_from_signature(fn.signature, fn.params, self.backend)
        kwargs = dict(kwargs, debug=kwargs.get("debug", fn.debug) or False)
        bound, specialization, options = self.binders[fn](*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound, specialization, options)
        return Spec(fn, signature, constexprs, attrs, options)

    def __call__(self, fn, *args, grid, warmup, **kwargs):
        spec = self.bind(fn, [_Ptr(a) if is_fake(a) else a for a in args], kwargs)
        spec = self.specs.setdefault(spec.key(), spec)
        if self.case not in spec.cases:
            spec.cases.append(self.case)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        host = getattr(fn, "host", None)
        if host and tensors and not any(map(is_fake, tensors)):
            with torch.no_grad():
                host(*args, **kwargs)
            return
        for a in tensors:
            if a.is_floating_point() and not is_fake(a):
                a.data.zero_()  # .data: autograd's version counters are not bumped


@contextlib.contextmanager
def recording(recorder: _Recorder):
    """Inside: Triton launches (of CPU tensors too) go to `recorder`; the library's custom ops run
    their real host code on fake tensors too; the host code takes the branches it takes on a GPU
    where the library offers that setting."""
    from triton.runtime.jit import JITFunction

    if _core.INTERPRET:
        raise RuntimeError("aot needs compiled kernels: run it without TRITON_INTERPRET=1")
    old_run, old_cpu = JITFunction.run, getattr(_core._state, "cpu", False)
    JITFunction.run = lambda fn, *a, **k: recorder(fn, *a, **k)
    _core._state.cpu = True  # use_triton() on CPU tensors; the launches never reach a device
    try:
        with real_bodies_on_fakes("sdekernels"), _cuda_host():
            yield recorder
    finally:
        JITFunction.run, _core._state.cpu = old_run, old_cpu


def _cuda_host():
    """The library's setting that makes host code take its CUDA choices on CPU tensors (tiles, warps,
    dot precision, grid splits), where the library has it."""
    setting = getattr(_core, "emulate_cuda", None)
    return setting() if setting else contextlib.nullcontext()


def cases(shapes: str, ops=None):
    """(op info, shape, dtype, backward) for every op, shape of the set, dtype it is tested in and data
    regime of the op (the shape updated by the regime's keys)."""
    for name, info in sorted(all_ops().items()):
        if ops and name not in ops:
            continue
        for shape in (info.bench if shapes == "bench" else info.shapes):
            backward = info.differentiable and (shapes == "test" or bool(shape.get("backward")))
            for dtype in info.tol:
                for regime in info.regimes or ({},):
                    yield info, {**shape, **regime}, dtype, backward


def _regime(info, shape) -> dict:
    return {k: shape[k] for r in info.regimes for k in r if k in shape}


def label(info, shape, dtype, backward) -> str:
    """The case: op, shape, dtype and pass (a data regime is not part of it)."""
    sh = ",".join(f"{k}={v}" for k, v in shape.items() if k not in ("quick", "backward", *_regime(info, shape)))
    return f"{info.name}({sh}) {str(dtype).replace('torch.', '')}{' fwd+bwd' if backward else ''}"


def run_case(info, shape, dtype, backward):
    """One call of the op on CPU (forward, and backward when asked) with its launches recorded. In a
    data regime, on its data: each kernel with a host equivalent computes its result, so the host
    code takes the paths that data takes. Else on fake tensors first (no storage, no arithmetic,
    any size in no time); where host code reads data, again on real tensors of zeros."""
    def make():
        return Sample(*info.make(shape, torch.device("cpu"), dtype, torch.Generator().manual_seed(0)).prepared())

    if _regime(info, shape):
        _call(info, make(), backward)
        return "data"
    try:
        with fake_mode(allow_non_fake_inputs=True):
            _call(info, make(), backward)
        return "fake"
    except Exception:
        pass
    finally:
        _clear_caches()
    try:
        with fake_mode():
            s = make()
        s = s.map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).zero_())
    except Exception:  # a maker that reads its own data
        s = make()
    _call(info, s, backward)
    return "zeros"


def _clear_caches():
    """The op modules' functools caches may now hold tensors made under the fake mode: drop them."""
    for name, mod in list(sys.modules.items()):
        if name.startswith("sdekernels.ops") and mod is not None:
            for v in list(vars(mod).values()):
                if callable(getattr(v, "cache_clear", None)):
                    v.cache_clear()


def _call(info, s: Sample, backward: bool):
    if not backward:
        with torch.no_grad():
            s.call(info.op)
        return
    s = info.leaves(s)
    outs = [t for t in flat(s.call(info.op)) if t.is_floating_point() and t.requires_grad]
    if outs:
        sum(o.float().sum() for o in outs).backward()


def capture(shapes: str, target, ops=None, progress=True):
    """The distinct specialisations launched at `shapes`, and the cases that raised."""
    recorder = _Recorder(target)
    failed, timing = [], []
    todo = list(cases(shapes, ops))
    with recording(recorder), torch.random.fork_rng():
        for case in _progress(todo, "capture", progress):
            recorder.case = label(*case)
            t0 = time.perf_counter()
            try:
                how = run_case(*case)
            except Exception as e:
                how = "failed"
                failed.append((recorder.case, f"{type(e).__name__}: {str(e).strip()[:200]}"))
            timing.append({"case": recorder.case, "regime": _regime(case[0], case[1]), "tensors": how,
                           "s": round(time.perf_counter() - t0, 3)})
    return list(recorder.specs.values()), failed, timing


def _progress(items, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, disable=not enabled, file=sys.stderr)


# ---------------------------------------------------------------- compile and inspect


def _bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack frame and static shared memory of the one kernel in `cubin` (cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {out[-300:]}")
    reg, stack, shared, _ = map(int, m.groups())
    return {"regs": reg, "stack_bytes": stack, "shared_bytes": shared}


# MLIR locations (TTIR) and PTX line info: each tl.dot is known by its source position and that of
# its caller, as file name:line:column (PTX's `.loc ..., inlined_at` names one level of inlining,
# Triton 3.6's PTX only the comment `// file:line:col @[ caller:line:col ]`; the library's dots sit
# in _triton.mma, called from the kernels).
_LOC_DEF = re.compile(r"^#(loc\d*) = loc\((.*)\)\s*$", re.M)
_FILE_LOC = re.compile(r'"([^"]*)":(\d+):(\d+)')
_NAMED_LOC = re.compile(r'"[^"]*"\((.*)\)')
_TTIR_DOT = re.compile(r"=\s*tt\.dot\s(.*?):\s*tensor<[0-9x]+x(\w+)[^>]*>.*\sloc\((.*)\)\s*$", re.M)
_PTX_FILE = re.compile(r'^\s*\.file\s+(\d+)\s+"([^"]+)"', re.M)
_PTX_LOC = re.compile(r"^\s*\.loc\s+(\d+)\s+(\d+)\s+(\d+)(?:.*?inlined_at\s+(\d+)\s+(\d+)\s+(\d+))?")
_PTX_CALLER = re.compile(r"//.*?@\[\s*([^\s:]+):(\d+):(\d+)")
_PTX_MMA = re.compile(r"^\s*(?:@!?%\w+\s+)?(wgmma\.mma_async|mma\.sync)\S*?\.(tf32|bf16|f16|f64|e4m3|e5m2|s8|u8)\b")


def _frames(loc: str, defs: dict) -> tuple:
    """(file name, line, column) frames of an MLIR location, innermost first."""
    loc = loc.strip()
    if loc.startswith("#"):
        return _frames(defs.get(loc[1:], "unknown"), defs)
    if loc.startswith("loc(") and loc.endswith(")"):
        return _frames(loc[4:-1], defs)
    if loc.startswith("callsite(") and loc.endswith(")"):
        body, depth = loc[len("callsite("):-1], 0
        for i, ch in enumerate(body):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and body.startswith(" at ", i):
                return _frames(body[:i], defs) + _frames(body[i + 4:], defs)
    if m := _FILE_LOC.fullmatch(loc):
        return ((os.path.basename(m[1]), int(m[2]), int(m[3])),)
    if m := _NAMED_LOC.fullmatch(loc):
        return _frames(m[1], defs)
    return ()


def _site(frames: tuple) -> tuple:
    """A dot's key: its own position and its caller's (None for a tl.dot in the kernel's body)."""
    return (frames[0] if frames else None, frames[1] if len(frames) > 1 else None)


def _where(frames: tuple) -> str:
    return " < ".join(f"{name}:{line}:{col}" for name, line, col in frames) or "?"


def _ptx_mmas(ptx: str) -> dict:
    """{dot key: [MMA instruction kinds, e.g. "wgmma.tf32"]} from the PTX's line info."""
    files = {int(i): os.path.basename(p) for i, p in _PTX_FILE.findall(ptx)}
    pos = lambda f, line, col: (files.get(int(f)), int(line), int(col))  # noqa: E731
    out, here = {}, (None, None)
    for line in ptx.splitlines():
        if m := _PTX_LOC.match(line):
            caller = _PTX_CALLER.search(line)
            here = (pos(*m.group(1, 2, 3)), pos(*m.group(4, 5, 6)) if m[4] else
                    (caller[1], int(caller[2]), int(caller[3])) if caller else None)
        elif m := _PTX_MMA.match(line):
            out.setdefault(here, []).append(f"{m[1].split('.')[0]}.{m[2]}")
    return out


def dots(ttir: str, ptx: str) -> list[dict]:
    """Each tl.dot of a compiled kernel (its operand dtype, input precision, source position "at" from
    the tl.dot out through its callers, and "site": its caller's, the call of _triton.mma) and
    the tensor-core instructions it became: unit "wgmma.<type>" / "mma.<type>" with their count, or
    "fma" where none carries its position (its products run on the FMA units). Every MMA instruction
    of the PTX must belong to a dot (else ValueError: no line info)."""
    defs = dict(_LOC_DEF.findall(ttir))
    mmas = _ptx_mmas(ptx)
    rows, used = [], set()
    for attrs, dtype, loc in _TTIR_DOT.findall(ttir):
        frames = _frames(loc, defs)
        key = _site(frames)
        kinds = mmas.get(key, []) if key[0] else []
        used.add(key)
        prec = re.search(r"inputPrecision\s*=\s*(\w+)", attrs)
        rows.append({"at": _where(frames), "site": _where(frames[1:2] or frames[:1]), "dtype": dtype,
                     "precision": prec[1] if prec else "-", "unit": ",".join(sorted(set(kinds))) or "fma",
                     "instructions": len(kinds)})
    stray = sum(len(v) for k, v in mmas.items() if k not in used)
    if stray:
        raise ValueError(f"{stray} MMA instruction(s) in the PTX belong to no tl.dot (is line info off?)")
    return rows


@contextlib.contextmanager
def _ptxas_knobs():
    """Triton prints ptxas's -v log (registers, stack frame, spill stores and loads) while this is on,
    and keeps the PTX's line info (which maps MMA instructions to dots)."""
    from triton import knobs

    old = knobs.nvidia.dump_ptxas_log, knobs.compilation.disable_line_info
    knobs.nvidia.dump_ptxas_log, knobs.compilation.disable_line_info = True, False
    try:
        yield
    finally:
        knobs.nvidia.dump_ptxas_log, knobs.compilation.disable_line_info = old


def _ptxas_log(kernel, options, target) -> str:
    """ptxas's -v log of the kernel's PTX, by the backend's own ptxas step (the command, flags and
    binary that made its cubin): what a cold compile prints, also for a kernel from the cache."""
    from triton.compiler import make_backend

    backend = make_backend(target)
    log = io.StringIO()
    with _ptxas_knobs(), contextlib.redirect_stdout(log):
        backend.make_cubin(kernel.asm["ptx"], kernel.metadata._asdict(), backend.parse_options(options), target.arch)
    return log.getvalue()


def inspect(kernel, ptxas_log: str) -> dict:
    """Row fields of a compiled kernel: registers, stack frame, spill bytes (stores plus loads) and
    shared memory (ptxas's log, checked against cuobjdump's reading of the cubin), and its dots with
    the instructions each became."""
    usage = [u for u in ptxas_usage(ptxas_log) if u["kernel"] == kernel.metadata.name]
    if len(usage) != 1:
        raise RuntimeError(f"no ptxas report of {kernel.metadata.name}: {ptxas_log[-300:]}")
    cubin = resource_usage(kernel.asm["cubin"])
    if (usage[0]["regs"], usage[0]["stack_bytes"]) != (cubin["regs"], cubin["stack_bytes"]):
        raise RuntimeError(f"ptxas's log {usage[0]} disagrees with the cubin {cubin}")
    row = {k: usage[0][k] for k in ("regs", "stack_bytes", "spill_bytes")}
    ds = dots(kernel.asm["ttir"], kernel.asm["ptx"])
    tc = [d["unit"] for d in ds if d["unit"] != "fma"]
    row.update(shared_bytes=max(int(kernel.metadata.shared), cubin["shared_bytes"]), dots=ds, has_dot=bool(ds),
               dot_dtypes=sorted({d["dtype"] for d in ds}),
               dot_precision=",".join(sorted({d["precision"] for d in ds} - {"-"})),
               tensor_cores=",".join(sorted({u.split(".")[0] for t in tc for u in t.split(",")})),
               tc_types=",".join(sorted({u.split(".")[1] for t in tc for u in t.split(",")})))
    return row


def compile_spec(spec: Spec, target) -> dict:
    """One row of the report. The figures are the same whether Triton compiles the kernel or takes it
    from its cache: a cold compile's ptxas log is used, a cached kernel's PTX goes through ptxas again."""
    import triton
    from triton.compiler import ASTSource

    row = {"kernel": spec.name, "dtype": spec.dtype(), "constexprs": spec.constants(), "div16": spec.div16(),
           "num_warps": spec.options.num_warps, "num_stages": spec.options.num_stages,
           "signature": {k: v for k, v in spec.signature.items() if v != "constexpr"}, "cases": spec.cases}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        with _ptxas_knobs(), contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs), target=target,
                                    options=spec.options.__dict__)
        log = log.getvalue()
        if f"entry function '{kernel.metadata.name}'" not in log:  # from the cache
            log = _ptxas_log(kernel, spec.options.__dict__, target)
        row.update(status="ok", **inspect(kernel, log))
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {str(e).strip()[-1500:]}")
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    return row


_PTXAS_FN = re.compile(r"Compiling entry function '(\S+)' for '(\w+)'")
_PTXAS_PROPS = re.compile(r"Function properties for (\S+)")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def ptxas_usage(log: str) -> list[dict]:
    """Per kernel of an `nvcc -Xptxas -v` (or `ptxas -v`) log: registers, stack frame, spills (bytes of
    spill stores plus spill loads; a stack frame without them is a local array, not a spill) and
    static shared memory. A device function the kernel calls (e.g. libdevice's slow path of an fp64
    sin) has its own properties: its spills count as the kernel's, its frame is not the kernel's."""
    rows, props = [], None
    for line in log.splitlines():
        if m := _PTXAS_FN.search(line):
            rows.append({"kernel": m.group(1), "arch": m.group(2), "regs": 0, "stack_bytes": 0, "spill_bytes": 0,
                         "shared_bytes": 0})
        elif m := _PTXAS_PROPS.search(line):
            props = m.group(1)
        elif rows and (m := _PTXAS_FRAME.search(line)):
            spill = int(m.group(2)) + int(m.group(3))
            if props == rows[-1]["kernel"]:
                rows[-1].update(stack_bytes=int(m.group(1)), spill_bytes=rows[-1]["spill_bytes"] + spill)
            else:
                rows[-1]["spill_bytes"] += spill
        elif rows and (m := _PTXAS_USED.search(line)):
            rows[-1].update(regs=int(m.group(1)), shared_bytes=int(m.group(2) or 0))
    return rows


def nvcc_rows(arch: str = "sm_90") -> list[dict]:
    """The CUDA kernels of csrc/cuda compiled by nvcc for `arch` (empty without nvcc or csrc/, as in an
    install from a wheel)."""
    import glob
    import shutil

    from ._ext import csrc_dir

    nvcc = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)
    if nvcc is None or csrc_dir() is None:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(glob.glob(os.path.join(csrc_dir(), "cuda", "*.cu"))):
            out = subprocess.run(nvcc_command(nvcc, src, os.path.join(tmp, "k.o"), arch), capture_output=True,
                                 text=True)
            if out.returncode:
                rows.append({"kernel": os.path.basename(src), "status": "error", "error": out.stderr[-1500:]})
                continue
            rows += [dict(r, source=os.path.basename(src), status="ok") for r in ptxas_usage(out.stdout + out.stderr)]
    return rows


def nvcc_command(nvcc: str, source: str, output: str, arch: str = "sm_90") -> list[str]:
    return [nvcc, f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-v", "-c", source, "-o", output]


def problems(row: dict) -> list[str]:
    """What the CI refuses in a row: a compile error, a spill (a stack frame alone is a local array,
    not a spill), shared memory over the limit, a dot other than float64 on the FMA units (judged per
    dot: one tensor-core dot does not clear the kernel's others)."""
    if row["status"] != "ok":
        return ["error"]
    out = []
    if row["spill_bytes"]:
        out.append("spill")
    if row["shared_bytes"] > SHARED_LIMIT:
        out.append("shared")
    if any(d["unit"] == "fma" and d["dtype"] != "f64" for d in row["dots"]):
        out.append("fma_dot")
    return out


def report(shapes: str = "bench", arch: str = "sm_90", ops=None, progress=True) -> dict:
    """{"rows": one per specialisation, "failed": cases whose capture raised, "environment": ...}."""
    import triton
    from triton.backends.compiler import GPUTarget

    m = re.fullmatch(r"sm_(\d+)a?", arch)
    if not m:
        raise ValueError(f"arch must look like sm_90, got {arch!r}")
    target = GPUTarget("cuda", int(m.group(1)), 32)
    t0 = time.perf_counter()
    specs, failed, timing = capture(shapes, target, ops, progress)
    t1 = time.perf_counter()
    specs.sort(key=lambda s: (s.name, s.dtype(), s.constants(), s.options.num_warps))
    rows = [compile_spec(s, target) for s in _progress(specs, f"compile {arch}", progress)]
    for row in rows:
        row["problems"] = problems(row)
    env = {"triton": triton.__version__, "torch": torch.__version__, "arch": arch, "shapes": shapes,
           "capture_s": round(t1 - t0, 1), "compile_s": round(time.perf_counter() - t1, 1)}
    return {"environment": env, "failed": [{"case": c, "error": e} for c, e in failed], "cases": timing,
            "rows": rows}


def _dot_cell(row) -> str:
    """Each dot as line:column=unit, at the call of _triton.mma (or the tl.dot itself)."""
    return " ".join(f"{d['site'].split(':', 1)[-1]}={d['unit']}" for d in row.get("dots", []))


def table(rows) -> str:
    cols = ["kernel", "dtype", "constexprs", "div16", "num_warps", "num_stages", "status", "regs", "stack_bytes",
            "spill_bytes", "shared_bytes", "dots", "problems"]
    head = ["kernel", "dtype", "constexprs", "%16", "warps", "stages", "status", "regs", "stack B", "spill B",
            "shared B", "dots (line:col=unit)", "problems"]
    fmt = lambda v: ",".join(v) if isinstance(v, list) else ("-" if v in ("", None) else str(v))  # noqa: E731
    cells = [head] + [[_dot_cell(r) or "-" if c == "dots" else fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() for c in cells)


def main(args) -> int:
    """The `aot` subcommand (args: arch, shapes, op, json, no_progress). Exit 1 on a compile error
    or a case whose capture raised; the checks of the rows are the CI's (python_tests/test_aot.py)."""
    if _core.INTERPRET:  # the kernels were built for the interpreter: start again without it
        argv = ["aot", "--arch", args.arch, "--shapes", args.shapes, *(["--json", args.json] if args.json else []),
                *[a for op in args.op or () for a in ("--op", op)], *(["--no-progress"] if args.no_progress else [])]
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "sdekernels", *argv], env=env)
    rep = report(args.shapes, args.arch, args.op, progress=not args.no_progress)
    print(table(rep["rows"]))
    for f in rep["failed"]:
        print(f"capture failed: {f['case']}: {f['error']}")
    bad = sum(bool(r["problems"]) for r in rep["rows"])
    env = rep["environment"]
    print(f"{len(rep['rows'])} specialisations, {bad} with problems; triton {env['triton']}, "
          f"capture {env['capture_s']} s, compile {env['compile_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 1 if rep["failed"] or any(r["status"] != "ok" for r in rep["rows"]) else 0
