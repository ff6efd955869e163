"""Generic tests of every registered op, driven by sdekernels.registry: parity with the reference
per dtype and kernel path, gradients (gradcheck in float64 and against the reference), bad
inputs, inputs never written, non-contiguous inputs, non-finite isolation, debug checks,
torch.compile, and property-based shapes."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdekernels._core as core
from sdekernels.registry import all_ops, parity

from helpers import DEVICE, DTYPES, PATHS, assert_close, cases, flat, on_path, param_id, weighted_sum

OPS = all_ops()
NAMES = sorted(OPS)


def _sample(info, shape, dtype=torch.float64, seed=0):
    return info.make(shape, DEVICE, dtype, torch.Generator().manual_seed(seed))


def _check_parity(info, shape, dtype, path, seed=0):
    s = _sample(info, shape, dtype, seed)
    with on_path(path):
        for t, r in zip(flat(s.call(info.op)), flat(s.call(info.ref))):
            assert t.dtype == r.dtype, f"{info.name}: output dtype {t.dtype}, reference gives {r.dtype}"
        _, ratio, msg = parity(info, shape, dtype, DEVICE, seed)
    assert ratio <= 1.0, f"{info.name} {shape} {dtype} {path}: {msg}"


@pytest.mark.parametrize("name,dtype,path,shape", cases(OPS, DTYPES, PATHS))
def test_parity(name, dtype, path, shape):
    _check_parity(OPS[name], shape, dtype, path)


def _differentiable(sample):
    return [t for t in sample.tensors() if t.requires_grad]


def _small(info, limit=600):
    """The shapes whose inputs have at most `limit` entries (gradcheck's cost grows with their square)."""
    return [sh for sh in info.shapes if sum(t.numel() for t in _sample(info, sh).tensors()) <= limit]


def _differentiable_op(info):
    return info.differentiable


@pytest.mark.parametrize("name,shape", cases(OPS, shapes=_small, where=_differentiable_op))
def test_gradcheck(name, shape):
    info = OPS[name]
    s = info.leaves(_sample(info, shape).bare())

    def fn(*ts):
        return s.with_tensors(ts).call(info.op)

    assert torch.autograd.gradcheck(fn, s.tensors(), eps=1e-6, atol=1e-6, rtol=1e-5), f"{name} {shape}"


@pytest.mark.parametrize("name,path,shape", cases(OPS, PATHS, where=_differentiable_op))
def test_grad_vs_reference(name, path, shape):
    info = OPS[name]
    grads = []
    for fn in (info.op, info.ref):
        s = info.leaves(_sample(info, shape))
        with on_path(path):
            loss = weighted_sum(s.call(fn), torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(loss, _differentiable(s), allow_unused=True))
    for g, r in zip(*grads):
        assert g is not None and torch.isfinite(g).all(), f"{name} {shape}: missing or non-finite gradient"
        assert_close(g, r, *info.grad_tol, f"{name} {shape} gradient")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=param_id)
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_backward(name, dtype):
    """Low precision gradients are computed in float32 and come back in the input dtype."""
    info = OPS[name]
    if not info.differentiable:
        pytest.skip("not differentiable")
    s = info.leaves(_sample(info, info.typical_shape, dtype))
    loss = weighted_sum(s.call(info.op), torch.Generator().manual_seed(1))
    for leaf, g in zip(_differentiable(s), torch.autograd.grad(loss.float(), _differentiable(s))):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert g.shape == leaf.shape


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    for args, kwargs, argname, *exc in OPS[name].bad(DEVICE):
        with pytest.raises(exc[0] if exc else ValueError, match=argname):
            OPS[name].op(*args, **kwargs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_inputs_not_written(name, path):
    info = OPS[name]
    s = info.leaves(_sample(info, info.typical_shape, torch.float32).bare())
    before = [t.detach().clone() for t in s.tensors()]
    with on_path(path):
        out = s.call(info.op)
        if info.differentiable:
            weighted_sum(out, torch.Generator().manual_seed(1)).backward()
    for t, b in zip(s.tensors(), before):
        assert torch.equal(t.detach(), b)


def _strided(t):
    """The same values in a non-contiguous layout."""
    return torch.stack([t, torch.full_like(t, float("nan"))], -1)[..., 0]


@pytest.mark.parametrize("name,path,shape", cases(OPS, PATHS, shapes=lambda info: info.typical_shapes(2)))
def test_non_contiguous(name, path, shape):
    info = OPS[name]
    s = _sample(info, shape, torch.float32)
    nc = s.map(_strided)
    assert not any(t.is_contiguous() for t in nc.tensors())
    with on_path(path):
        assert_close(nc.call(info.op), s.call(info.op), 1e-6, 1e-6, f"{name} {shape}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_stays_in_its_batch_element(name, path):
    info = OPS[name]
    shape = info.batched_shape(2)
    if shape is None:
        pytest.skip("no batched sample")
    s = _sample(info, shape, torch.float32).bare()
    poisoned = info.main_input(s).clone()
    poisoned[0] = float("nan")
    with on_path(path):
        clean, dirty = flat(s.call(info.op)), flat(info.with_main_input(s, poisoned).call(info.op))
    for c, d in zip(clean, dirty):
        assert torch.equal(c[1:], d[1:]), f"{name}: a NaN in batch element 0 changed element 1+"


@pytest.mark.parametrize("name", NAMES)
def test_debug_mode_rejects_non_finite(name, monkeypatch):
    info = OPS[name]
    s = _sample(info, info.typical_shape, torch.float32)
    bad = info.main_input(s).clone()
    bad[(0,) * bad.dim()] = float("inf")
    s = info.with_main_input(s, bad)
    s.call(info.op)  # no check (and no device sync) outside debug mode
    monkeypatch.setattr(core, "DEBUG", True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        s.call(info.op)


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph(name):
    info = OPS[name]
    s = _sample(info, info.typical_shape, torch.float32).bare()
    compiled = torch.compile(info.op, fullgraph=True)
    results = []
    for fn in (info.op, compiled):
        leaves = info.leaves(s)
        out = leaves.call(fn)
        grads = ()
        if info.differentiable:
            grads = torch.autograd.grad(weighted_sum(out, torch.Generator().manual_seed(1)), _differentiable(leaves))
        results.append((flat(out), grads))
    torch._dynamo.reset()
    assert_close(results[1], results[0], 1e-5, 1e-5, f"{name} compiled")


def _shapes(info):
    return st.fixed_dictionaries({k: st.integers(lo, hi) for k, (lo, hi) in info.space.items()}).filter(
        lambda sh: info.valid is None or info.valid(sh))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_property_shapes(name, path):
    info = OPS[name]

    @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_shapes(info), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**16))
    def check(shape, dtype, seed):
        _check_parity(info, shape, dtype, path, seed)

    check()


@pytest.mark.parametrize("name", NAMES)
def test_backward_without_extension_agrees(name, monkeypatch):
    """Without the C++ extension the backward runs autograd through the reference: same gradients."""
    import sdekernels._ext as ext

    info = OPS[name]
    if not info.differentiable or not ext.available():
        pytest.skip("needs a differentiable op and the extension to compare with")
    grads = []
    for available in (True, False):
        monkeypatch.setattr(ext, "available", lambda available=available: available)
        s = info.leaves(_sample(info, info.typical_shape))
        loss = weighted_sum(s.call(info.op), torch.Generator().manual_seed(1))
        grads.append(torch.autograd.grad(loss, _differentiable(s)))
    assert_close(grads[0], grads[1], *info.grad_tol, f"{name}: extension vs fallback")
