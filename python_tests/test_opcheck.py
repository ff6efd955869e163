"""torch.library.opcheck on every custom op of the sdekernels namespace (forward and backward ops),
with the arguments each registry entry passes to them: schema, autograd registration, fake kernels
(shapes, dtypes and strides equal to the real kernels', which torch.compile relies on: a wrong
stride passes only while inductor's on-disk cache replays an old artifact) and AOT dispatch.
The calls are recorded while the entry's op runs forward and backward, on contiguous and on
column-major inputs, on both solver paths of the SVD ops."""
import pytest
import torch
from torch.utils._pytree import tree_map

import sdekernels.ops._solvers as solvers
from sdekernels import _torch
from sdekernels.registry import all_ops

from helpers import DEVICE, PATHS, on_path, weighted_sum

OPS = all_ops()
NAMESPACE = "sdekernels"


def _column_major(t: torch.Tensor) -> torch.Tensor:
    """The same values, dense but not contiguous (what empty_like copies and a contiguous result is not)."""
    return t.mT.contiguous().mT if t.dim() >= 2 else t


def _record(info, path, layout, monkeypatch) -> dict:
    """{qualname: (op, args, kwargs)}: the first call of each custom op while the entry's op runs
    forward and backward on its typical sample."""
    sample = info.make(info.typical_shape, DEVICE, torch.float32, torch.Generator().manual_seed(0)).bare()
    s = info.leaves(sample.map(layout))

    def run():
        out = s.call(info.op)
        if info.differentiable:
            weighted_sum(out, torch.Generator().manual_seed(1)).backward()

    with on_path(path):
        return _recorded(run, monkeypatch)


def _record_loss(layout, monkeypatch) -> dict:
    """The same for SDELoss, whose own custom ops (decompose, enhance_decomposed, seeded_xi) no op's
    registry entry calls: forward and backward, centred and not, ξ from the agreed seed."""
    from sdekernels.nn import SDELoss

    g = torch.Generator().manual_seed(0)
    a, b = (layout(torch.randn(12, 7, generator=g)).requires_grad_() for _ in range(2))

    def run():
        for center in (False, True):
            SDELoss(10, center=center)(a, b, step=3).backward()

    return _recorded(run, monkeypatch)


def _recorded(run, monkeypatch) -> dict:
    calls = {}
    call = torch.library.CustomOpDef.__call__

    def recording(op, *args, **kwargs):
        if op._namespace == NAMESPACE and op._qualname not in calls:
            snap = lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v  # noqa: E731 (keeps the layout)
            calls[op._qualname] = (op, tree_map(snap, args), tree_map(snap, kwargs))
        return call(op, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch.library.CustomOpDef, "__call__", recording)
        run()
    return calls


SOLVERS = {"gram": solvers.GRAM_MAX_R, "randomized": 1}  # the SVD ops' two paths (GRAM_MAX_R lowered)
NO_GRAD = {"sdekernels::spectral_partition", "sdekernels::seeded_xi"}  # SDELoss's ops without a gradient
RANDOMIZED = {"sdekernels::svd_topk", "sdekernels::spectral_enhance"}  # the custom ops with a randomized path


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("layout", ["contiguous", "column_major"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_opcheck(name, path, layout, solver, monkeypatch):
    info = OPS[name]
    to_layout = _column_major if layout == "column_major" else (lambda t: t)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        ("test_aot_dispatch_dynamic",) if layout == "contiguous" else ())
    monkeypatch.setattr(solvers, "GRAM_MAX_R", SOLVERS[solver])
    calls = _record(info, path, to_layout, monkeypatch)
    if solver != "gram" and not RANDOMIZED & set(calls):
        pytest.skip("no SVD solver in this op")
    _opcheck(calls, info.differentiable, path, utils)


@pytest.mark.parametrize("layout", ["contiguous", "column_major"])
def test_opcheck_sde_loss(layout, monkeypatch):
    calls = _record_loss(_column_major if layout == "column_major" else (lambda t: t), monkeypatch)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor") + (
        ("test_aot_dispatch_dynamic",) if layout == "contiguous" else ())
    _opcheck(calls, True, "aten", utils)


def _opcheck(calls: dict, differentiable: bool, path: str, utils: tuple) -> None:
    failures = []
    for qualname, (op, args, kwargs) in calls.items():
        # forward ops through their autograd; not the partition's counts nor ξ's draw
        grad = differentiable and not op._name.endswith("backward") and qualname not in NO_GRAD

        def req(v, grad=grad):
            return v.requires_grad_(grad and v.is_floating_point()) if isinstance(v, torch.Tensor) else v

        with on_path(path):
            result = torch.library.opcheck(op, tree_map(req, args), kwargs, test_utils=utils, raise_exception=False)
        failures += [f"{qualname} {test}: {str(err)[:400]}" for test, err in result.items() if err != "SUCCESS"]
    assert not failures, "\n".join(failures)


def test_every_custom_op_is_checked(monkeypatch):
    """The registry's ops and SDELoss reach every custom op of the namespace, so test_opcheck (and
    test_opcheck_sde_loss) check them all."""
    defined = _torch.defined_ops(NAMESPACE)
    reached = set()
    for limit in SOLVERS.values():
        monkeypatch.setattr(solvers, "GRAM_MAX_R", limit)
        for info in OPS.values():
            reached |= set(_record(info, "aten", lambda t: t, monkeypatch))
    reached |= set(_record_loss(lambda t: t, monkeypatch))
    assert defined - reached == set(), f"custom ops no registry entry reaches: {sorted(defined - reached)}"


MAX_OUTPUTS = 6  # a custom op returns at most this many tensors: more is a sign that it does two jobs


def _outputs(qualname: str) -> int:
    """How many tensors the operator's schema returns (a Tensor[] counts as one: its length is the input's)."""
    ns, name = qualname.split("::")
    return sum(1 for r in getattr(getattr(torch.ops, ns), name).default._schema.returns
               if "Tensor" in str(r.type))


def test_no_custom_op_returns_more_than_six_tensors():
    counts = {q: _outputs(q) for q in sorted(_torch.defined_ops(NAMESPACE))}
    assert counts and all(n >= 1 for n in counts.values()), counts
    assert {q: n for q, n in counts.items() if n > MAX_OUTPUTS} == {}


def test_output_count_reads_the_schema():
    """The count above can fail: an op of seven tensors counts seven."""
    lib = torch.library.Library("sdekernels_layout_test", "FRAGMENT")
    lib.define("seven(Tensor x) -> (" + ", ".join(["Tensor"] * 7) + ")")
    assert _outputs("sdekernels_layout_test::seven") == 7
    assert _outputs("sdekernels::spectral_enhance") == 6
