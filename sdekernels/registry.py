"""The op registry: one `OpInfo` per op drives the generic tests, `check` and the bench table.

An op module registers its entry beside its kernels (`register(OpInfo(...))`); adding an op is
writing its kernel, its backward and that one entry.
"""
import ast
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16


@dataclass
class Sample:
    """Arguments of one call. `prep(args, kwargs) -> (args, kwargs)` maps the leaf tensors to the
    op's arguments (e.g. QR, so that a basis stays orthonormal); gradients are taken with respect
    to the leaves: every tensor in args and kwargs."""
    args: tuple
    kwargs: dict = field(default_factory=dict)
    prep: Callable | None = None

    def prepared(self):
        return self.prep(self.args, self.kwargs) if self.prep else (self.args, self.kwargs)

    def call(self, fn):
        args, kwargs = self.prepared()
        return fn(*args, **kwargs)

    def tensors(self) -> list:
        return [t for t in (*self.args, *self.kwargs.values()) if isinstance(t, torch.Tensor)]

    def with_tensors(self, tensors) -> "Sample":
        """The same call with its tensors replaced, in the order of `tensors()`."""
        it = iter(tensors)
        f = lambda v: next(it) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return Sample(tuple(f(a) for a in self.args), {k: f(v) for k, v in self.kwargs.items()}, self.prep)

    def map(self, fn) -> "Sample":
        return self.with_tensors([fn(t) for t in self.tensors()])

    def bare(self) -> "Sample":
        """The prepared arguments as leaves (no prep)."""
        return Sample(*self.prepared())


@dataclass
class OpInfo:
    name: str
    op: Callable                     # the public sdekernels function
    ref: Callable                    # its reference in sdekernels.reference
    make: Callable                   # make(shape: dict, device, dtype, generator) -> Sample
    shapes: list                     # shapes of the parity tests (dicts understood by make)
    space: dict                      # hypothesis ranges {key: (lo, hi)} over the same keys
    bad: Callable                    # bad(device) -> [(args, kwargs, name of the bad argument[, TypeError])]:
                                     # each call raises a ValueError (or the given type) naming the argument
    bench: list                      # bench shapes; "quick": True puts one in --quick, "backward": True times fwd+bwd
    cost: Callable                   # cost(sample) -> (bytes moved, flops) of one forward
    tol: dict = field(default_factory=lambda: {F64: (1e-10, 1e-9), F32: (1e-5, 1e-4),
                                               BF16: (2e-2, 2e-2), F16: (5e-3, 5e-3)})
    grad_tol: tuple = (1e-8, 1e-7)   # (atol, rtol) of float64 gradients against the reference
    differentiable: bool = True
    batch_key: str | None = "batch"  # shape key of the leading batch dim (non-finite isolation test)
    valid: Callable | None = None    # valid(shape) -> bool, to filter the hypothesis shapes
    canon: Callable | None = None    # canon(output) -> what is compared (e.g. sign-free SVD factors)
    baselines: dict = field(default_factory=dict)  # {label: fn called like the op, or a Tuned}, timed beside it
    constant: tuple = ()             # positions in Sample.tensors() that take no gradient (e.g. a detached target)
    own_dims: dict = field(default_factory=dict)  # {argument: how many trailing dims are the op's own, the rest batch}
                                       # where a shape without "batch" still has batch dims (e.g. channels)
    debug_bad: Callable | None = None  # debug_bad(device) -> like bad: tensor values out of their domain, rejected
                                       # in debug mode only (a check of values costs a device sync)
    # Every scale (SPEC §10): scaling(shape) -> (positions in Sample.tensors() multiplied by s, the degree d
    # of each flat output: out(s·x) = s^d·out(x)), or None where that sample is not homogeneous.
    scaling: Callable | None = None
    # Data regimes of `python -m sdekernels aot`: shape updates under which `make` draws data taking each
    # data-dependent path of the host code (a solver, a rank); the capture runs the op at every
    # shape once per regime, on that data. Empty: the host code reads no data that changes a launch.
    regimes: tuple = ()
    typical: int = 1                 # index in `shapes` of the typical shape (see typical_shape)
    # The GPU-sized shape, where the emulated CUDA launches (python_tests/test_triton.py) and the GPU
    # tests (test_gpu.py) run the op: big enough that every kernel takes each path of its CUDA launch
    # choices (several row and column blocks, partial tiles, grid splits), small enough for Triton's
    # interpreter (a few hundred programs at most).
    gpu_shape: dict | None = None
    # (forward, backward): how far two correct paths of the op (the Triton or CUDA kernels and the CPU
    # path) may differ, in epsilons of the work dtype (fp32 for bf16/fp16) relative to each output's
    # largest entry; bf16/fp16 add 4 of their own epsilons (kernel operands and results rounded to
    # them). It is the op's conditioning: how much it amplifies the rounding of sums taken in another
    # order. Where an op departs from the default its entry says why.
    cond: tuple = (16, 64)
    cond_by_dtype: dict = field(default_factory=dict)  # {dtype: (forward, backward)} where one dtype departs
    main: int = 0                    # position of the main input among the call's tensors (see main_input)

    @property
    def typical_shape(self) -> dict:
        """The shape of the tests that run one shape only (dtypes, layouts, autocast, compile, debug mode):
        small but not degenerate. By default the second of `shapes`: the first is by convention the
        degenerate edge (an empty batch, 1×1)."""
        return self.shapes[self.typical]

    def typical_shapes(self, n: int) -> list:
        """The typical shape and the n - 1 shapes after it: the shapes of tests too slow for every shape."""
        return self.shapes[self.typical:self.typical + n]

    def batched_shape(self, min_batch: int = 2, key: str | None = None) -> dict | None:
        """The first of `shapes` whose batch dim (`key`, default batch_key) is at least min_batch, or None."""
        key = key or self.batch_key
        return next((sh for sh in self.shapes if (sh.get(key) or 0) >= min_batch), None) if key else None

    def main_input(self, sample: Sample) -> torch.Tensor:
        """The sample's main input: the data tensor the op is called with (prep applied), the one the
        tests poison with a non-finite value. By default the call's first tensor."""
        return sample.bare().tensors()[self.main]

    def with_main_input(self, sample: Sample, tensor: torch.Tensor) -> Sample:
        """The sample's call (prep applied, no prep left) with its main input replaced by `tensor`."""
        bare = sample.bare()
        tensors = bare.tensors()
        tensors[self.main] = tensor
        return bare.with_tensors(tensors)

    def leaves(self, sample: Sample) -> Sample:
        """The sample's tensors as fresh leaves, requiring grad where the op is differentiable in them."""
        return sample.with_tensors([t.detach().requires_grad_(self.differentiable and i not in self.constant)
                                    for i, t in enumerate(sample.tensors())])


    def sources(self) -> list[str]:
        """The files of the op's CPU code, relative to the repository: the module that defines the op,
        the sdekernels modules it takes names from (not this registry) and, transitively, those the
        shared core takes names from (the private modules of sdekernels/ops and the constants table),
        the C++ functions it calls through the extension (the CPU implementations bindings.cpp names)
        and the headers those include, transitively. A change to any of them makes a measurement of
        the op out of date."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        module = sys.modules[inspect.unwrap(self.op).__module__]

        def used(mod):  # the modules of its functions, classes and modules, and those it imports values from
            found = {sys.modules[getattr(v, "__module__", None) or v.__name__] for v in vars(mod).values()
                     if inspect.ismodule(v) or inspect.isfunction(v) or inspect.isclass(v)}
            for node in ast.walk(ast.parse(inspect.getsource(mod))):
                if isinstance(node, ast.ImportFrom):
                    name = importlib.util.resolve_name("." * node.level + (node.module or ""), mod.__package__)
                    values = [a.name for a in node.names if f"{name}.{a.name}" not in sys.modules]  # not submodules
                    found |= {sys.modules[name]} if values and name in sys.modules else set()
            return found

        def core(mod):
            return mod.__name__.startswith("sdekernels.ops._") or mod.__name__ == "sdekernels.constants"

        mods = {module} | used(module)
        todo = [m for m in mods if core(m)]
        while todo:
            new = {m for m in used(todo.pop()) if m not in mods}
            mods |= new
            todo += [m for m in new if core(m)]
        files = {os.path.abspath(m.__file__) for m in mods if m.__name__.startswith("sdekernels")
                 and m.__name__ != __name__ and getattr(m, "__file__", None)}
        called = set()
        for f in files:
            called |= set(re.findall(r"torch\.ops\.sdekernels_C\.(\w+)", open(f).read()))
        csrc = os.path.join(root, "csrc")
        if called and os.path.isfile(os.path.join(csrc, "bindings.cpp")):
            text = open(os.path.join(csrc, "bindings.cpp")).read()
            cpu_block = text.split("TORCH_LIBRARY_IMPL(sdekernels_C, CPU", 1)[-1].split("}", 1)[0]
            impls = {f for name, f in re.findall(r'm\.impl\("(\w+)", &sdekernels::(\w+)\)', cpu_block)
                     if name in called}
            for f in list(impls):  # a wrapper in bindings.cpp: the CPU twins it dispatches to
                body = re.search(rf"static [^;{{]*\b{f}\((.*?)\n}}\n", text, re.S)
                if body:
                    files.add(os.path.join(csrc, "bindings.cpp"))
                    impls |= {t + "_cpu" for t in re.findall(r"SDK_TWIN\((\w+)", body.group(1))}
            for cpp in sorted(os.listdir(os.path.join(csrc, "cpu"))):
                path = os.path.join(csrc, "cpu", cpp)
                code = open(path).read()
                if any(re.search(rf"\b{f}\s*\(", code) for f in impls):
                    files.add(path)
                    headers = [h for h in re.findall(r'#include "\.\./(\w+\.h)"', code) if h != "ops.h"]
                    while headers:  # ops.h: declarations only; a header's own includes too
                        h = os.path.join(csrc, headers.pop())
                        if h not in files and os.path.isfile(h):
                            files.add(h)
                            headers += re.findall(r'#include "(\w+\.h)"', open(h).read())
        return sorted(os.path.relpath(f, root) for f in files)


@dataclass
class Tuned:
    """A baseline with a knob, run at the first of `values` whose output meets the op's accuracy bar
    on the sample (e.g. torch.svd_lowrank at the smallest niter that meets SPEC §1): a comparison at
    equal accuracy. make(value) -> a function called like the op; ok(sample, output) -> bool."""
    make: Callable
    values: tuple
    ok: Callable
    knob: str = "value"

    def resolve(self, sample: "Sample"):
        """(function, value) at the first value that meets the bar; (last, None) where none does."""
        for v in self.values:
            torch.manual_seed(0)
            fn = self.make(v)
            if self.ok(sample, sample.call(fn)):
                return fn, v
        return self.make(self.values[-1]), None


OPS: dict[str, OpInfo] = {}


def register(info: OpInfo) -> OpInfo:
    if info.name in OPS:
        raise ValueError(f"op {info.name!r} registered twice")
    OPS[info.name] = info
    return info


def all_ops() -> dict[str, OpInfo]:
    import sdekernels.ops  # noqa: F401  (importing the op modules fills OPS)
    return OPS


def flat(out) -> list:
    """The tensors of an op's output (a tensor, a tuple or a NamedTuple of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)] if isinstance(out, (tuple, list)) else []


def parity(info: OpInfo, shape: dict, dtype: torch.dtype, device, seed: int = 0):
    """Run the op and the float64 reference on the same (rounded) random inputs.

    Returns (max |error|, worst error / allowed error, message); the op passes where that ratio
    is <= 1, allowed = atol + rtol·|expected| from the entry's tolerances for this dtype."""
    s = info.make(shape, torch.device(device), dtype, torch.Generator().manual_seed(seed))
    out = s.call(info.op)
    expected = s.map(lambda t: t.double()).call(info.ref)
    if info.canon:
        out, expected = info.canon(out), info.canon(expected)
    atol, rtol = info.tol[dtype]
    worst_err, worst_ratio, msg = 0.0, 0.0, ""
    got, want = flat(out), flat(expected)
    if len(got) != len(want):
        return float("inf"), float("inf"), f"{len(got)} outputs, expected {len(want)}"
    for i, (a, e) in enumerate(zip(got, want)):
        if a.shape != e.shape:
            return float("inf"), float("inf"), f"output {i}: shape {tuple(a.shape)}, expected {tuple(e.shape)}"
        a, e = a.detach().double().cpu(), e.detach().double().cpu()
        both_nan = torch.isnan(a) & torch.isnan(e)
        err = torch.where(both_nan, 0.0, (a - e).abs()).nan_to_num(nan=float("inf"))
        if err.numel():
            ratio = float((err / (atol + rtol * e.abs())).max())
            if ratio > worst_ratio:
                worst_ratio, msg = ratio, f"output {i}: max error {float(err.max()):.3g} (atol {atol:g}, rtol {rtol:g})"
            worst_err = max(worst_err, float(err.max()))
    return worst_err, worst_ratio, msg


def randn(shape, device, dtype, gen, scale=1.0, shift=0.0):
    """Random test input drawn in float64 on CPU from `gen` (same values for every dtype/device)."""
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift
    return x.to(device=device, dtype=dtype)


def rand(shape, device, dtype, gen, lo=0.0, hi=1.0):
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo
    return x.to(device=device, dtype=dtype)


def grad_error(name: str, seed: int = 0) -> float:
    """The op's float64 gradients at its typical shape against its reference's autograd: the largest
    difference relative to the reference gradient's largest entry, over every input (one random
    cotangent for every output). `check` holds the forwards; this holds a backward."""
    info = all_ops()[name]
    s = info.make(info.typical_shape, torch.device("cpu"), F64, torch.Generator().manual_seed(seed))
    got = []
    for fn in (info.op, info.ref):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in s.tensors()]
        outs = [o for o in flat(s.with_tensors(leaves).call(fn)) if o.requires_grad]
        g = torch.Generator().manual_seed(seed + 1)
        loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
        got.append(torch.autograd.grad(loss, [x for x in leaves if x.requires_grad], allow_unused=True))
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(*got) if a is not None)
