"""Generic tests of every registered op at the edges of its input domain, driven by the registry:
empty batches and zero-size dims, torch.autocast, non-finite and out-of-domain scalars, and
debug-mode messages that name the user's argument. Plus the same checks for SDELoss."""
import inspect
import math

import pytest
import torch

import sdekernels._core as core
from sdekernels.nn import SDELoss
from sdekernels.ops.distances import hellinger
from sdekernels.reference import hellinger as ref_hellinger
from sdekernels.registry import all_ops, flat
from sdekernels.schedules import alpha, lam

from helpers import DEVICE, PATHS, cases, on_path, param_id, weighted_sum

OPS = all_ops()
NAMES = sorted(OPS)
LOW = [torch.bfloat16, torch.float16]


def _bound(info, shape, dtype=torch.float32):
    """The sample's arguments by name (defaults included), as the op's signature binds them."""
    s = info.make(shape, DEVICE, dtype, torch.Generator().manual_seed(0)).bare()
    bound = inspect.signature(info.op).bind(*s.args, **s.kwargs)
    bound.apply_defaults()
    return bound


def _call(info, bound, **changes):
    b = inspect.signature(info.op).bind(*bound.args, **bound.kwargs)
    b.arguments.update(changes)
    return info.op(*b.args, **b.kwargs)


def _named(name):
    return rf"\b{name}\b"


def _batched(info):
    """A shape with a batch dim, its bound arguments, and each tensor argument's number of batch dims
    (its dims beyond those of the same argument without a batch, or beyond the entry's own_dims)."""
    shape = info.batched_shape(1, key="batch")
    if shape is None:
        pytest.skip("no batched sample")
    bound, single = _bound(info, shape), _bound(info, {**shape, "batch": 0})
    nb = {}
    for k, v in bound.arguments.items():
        if isinstance(v, torch.Tensor):
            w = single.arguments[k]
            own = info.own_dims.get(k, w.dim() if isinstance(w, torch.Tensor) else 0)
            nb[k] = v.dim() - own
    return shape, bound, single, nb


def _grads(info, bound, **changes):
    """Outputs and the gradients of a weighted sum of them with respect to every differentiable tensor."""
    args = {**bound.arguments, **changes}
    leaves = {k: v.detach().requires_grad_(info.differentiable and v.is_floating_point())
              for k, v in args.items() if isinstance(v, torch.Tensor)}
    for i, k in enumerate(list(leaves)):
        if i in info.constant:
            leaves[k].requires_grad_(False)
    out = _call(info, bound, **leaves)
    diff = [v for v in leaves.values() if v.requires_grad]
    if not diff:
        return out, [], []
    loss = weighted_sum(out, torch.Generator().manual_seed(1))
    assert loss.requires_grad, f"{info.name}: the outputs are not connected to the inputs' graph"
    return out, diff, torch.autograd.grad(loss, diff)


# ---------------------------------------------------------------- empty batch, zero-size dims


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_outputs(name, path):
    """An empty batch: outputs with the batch dim are empty, a loss reduced over the batch is 0;
    the backward gives empty gradients."""
    info = OPS[name]
    _, bound, single, nb = _batched(info)
    empty = {k: bound.arguments[k][:0] for k, n in nb.items() if n > 0}
    with on_path(path):
        full, unbatched = flat(_call(info, bound)), flat(_call(info, single))
        out, leaves, grads = _grads(info, bound, **empty)
    out = flat(out)
    assert len(out) == len(full)
    for i, (o, f, u) in enumerate(zip(out, full, unbatched)):
        assert o.dtype == f.dtype, f"{name} output {i}: dtype {o.dtype}, expected {f.dtype}"
        if f.dim() > u.dim():
            assert tuple(o.shape) == (0, *f.shape[1:]), f"{name} output {i}: shape {tuple(o.shape)}"
        else:  # reduced over the batch: a loss over no element is 0
            assert o.shape == f.shape and torch.all(o == 0), f"{name} output {i}: {o}"
    for leaf, g in zip(leaves, grads):
        assert g.shape == leaf.shape and g.dtype == leaf.dtype


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", NAMES)
def test_zero_size_dim_is_rejected(name, path):
    """A zero-size dim of an argument's own (non-batch) dims is a ValueError naming the argument."""
    info = OPS[name]
    _, bound, _, nb = _batched(info)
    cases = 0
    for k, v in bound.arguments.items():
        if not isinstance(v, torch.Tensor):
            continue
        for d in range(nb[k], v.dim()):
            cases += 1
            with on_path(path), pytest.raises(ValueError, match=_named(k)):
                _call(info, bound, **{k: v.narrow(d, 0, 0)})
    assert cases, f"{name}: no tensor argument with non-batch dims"


# ---------------------------------------------------------------- autocast


def _assert_scaled_close(got, want, atol, rtol, what):
    """|got − want| <= atol + rtol·(|want| + max|want|): low precision rounds relative to the scale."""
    for i, (g, w) in enumerate(zip(flat(got), flat(want))):
        assert g.shape == w.shape, f"{what} {i}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        g, w = g.detach().double().cpu(), w.detach().double().cpu()
        assert torch.equal(torch.isfinite(g), torch.isfinite(w)), f"{what} {i}: non-finite entries differ"
        fin = torch.isfinite(w)
        if fin.any():
            err = (g[fin] - w[fin]).abs()
            bound = atol + rtol * (w[fin].abs() + w[fin].abs().max())
            assert bool((err <= bound).all()), f"{what} {i}: max error {float(err.max()):.3g}"


@pytest.mark.parametrize("inputs", ["float32", "low"])
@pytest.mark.parametrize("dtype", LOW, ids=param_id)
@pytest.mark.parametrize("name", NAMES)
def test_autocast(name, dtype, inputs):
    """Forward under torch.autocast and backward after it, on float32 inputs (as a model's parameters)
    and on inputs in the autocast dtype (as an autocast layer's outputs): finite, close to the op
    without autocast, gradients in each input's dtype."""
    info = OPS[name]
    bound = _bound(info, info.typical_shape, torch.float32 if inputs == "float32" else dtype)
    want_out, _, want_grads = _grads(info, bound)
    with torch.autocast(DEVICE.type, dtype=dtype):
        out, leaves, grads = _grads(info, bound)
    atol, rtol = info.tol[dtype]
    _assert_scaled_close(out, want_out, atol, rtol, f"{name} output")
    for leaf, g in zip(leaves, grads):
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
    _assert_scaled_close(grads, want_grads, atol, rtol, f"{name} gradient")


# ---------------------------------------------------------------- scalars and messages


def _numbers(v):
    """Positions of the numbers in an argument (the value itself, or the entries of a tuple)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [None]
    if isinstance(v, (tuple, list)):
        return [i for i, x in enumerate(v) if isinstance(x, (int, float)) and not isinstance(x, bool)]
    return []


@pytest.mark.parametrize("name,shape", cases(OPS))
def test_non_finite_scalar_is_rejected(name, shape):
    """NaN or ±Inf in any number an op takes (sizes included) is a ValueError or TypeError naming it."""
    info = OPS[name]
    bound = _bound(info, shape)
    for k, v in bound.arguments.items():
        for pos in _numbers(v):
            for bad in (math.nan, math.inf, -math.inf):
                value = bad if pos is None else type(v)(bad if i == pos else x for i, x in enumerate(v))
                with pytest.raises((ValueError, TypeError), match=_named(k)):
                    _call(info, bound, **{k: value})


@pytest.mark.parametrize("name", NAMES)
def test_debug_mode_names_the_argument(name, monkeypatch):
    """In debug mode a non-finite value in any tensor argument is a ValueError naming that argument."""
    info = OPS[name]
    bound = _bound(info, info.typical_shape)
    monkeypatch.setattr(core, "DEBUG", True)
    for k, v in bound.arguments.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
            bad = v.clone()
            bad[(0,) * bad.dim()] = float("inf")
            with pytest.raises(ValueError, match=rf"{_named(k)}.*NaN or Inf"):
                _call(info, bound, **{k: bad})


@pytest.mark.parametrize("name", NAMES)
def test_debug_mode_rejects_values_out_of_domain(name, monkeypatch):
    """Tensor values outside their domain (a check that costs a device sync): accepted outside debug
    mode, a ValueError naming the argument in debug mode."""
    info = OPS[name]
    if info.debug_bad is None:
        pytest.skip("no tensor argument with a restricted domain")
    cases = info.debug_bad(DEVICE)
    for args, kwargs, _ in cases:
        info.op(*args, **kwargs)
    monkeypatch.setattr(core, "DEBUG", True)
    for args, kwargs, argname in cases:
        with pytest.raises(ValueError, match=_named(argname)):
            info.op(*args, **kwargs)


@pytest.mark.parametrize("power", [1, 2, 0.5])
def test_hellinger_negative_spectrum_is_nan_on_every_path(power):
    """A negative singular value has no S^power: that row's distance and gradient are NaN on every
    path (ATen, Triton, and the reference), its neighbours unchanged."""
    S = torch.rand(3, 6, dtype=torch.float64, device=DEVICE) + 0.1
    T = torch.rand(3, 6, dtype=torch.float64, device=DEVICE) + 0.1
    bad = S.clone()
    bad[1, 2] = -0.5
    for path in PATHS:
        with on_path(path):
            a = bad.clone().requires_grad_(True)
            h = hellinger(a, T, power=power)
            (g,) = torch.autograd.grad(h.sum(), a)
            clean = hellinger(S, T, power=power)
        assert torch.isnan(h[1]) and torch.isnan(g[1]).all(), f"{path}: {h[1]} {g[1]}"
        assert torch.equal(h[[0, 2]], clean[[0, 2]]) and torch.isfinite(g[[0, 2]]).all()
    assert torch.isnan(ref_hellinger(bad, T, power=power)[1])


@pytest.mark.parametrize("call, name", [
    (lambda: alpha(math.nan), "t"), (lambda: alpha(1.5), "t"), (lambda: lam(0.5, start=1.5), "start"),
    (lambda: lam(0.5, end=math.nan), "end"), (lambda: lam(math.inf), "t")])
def test_schedules_reject_out_of_range(call, name):
    with pytest.raises(ValueError, match=_named(name)):
        call()


# ---------------------------------------------------------------- SDELoss


def _features(dtype, B=24, d=16):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(B, d, generator=g, dtype=torch.float64)
    b = 0.5 * a + torch.randn(B, d, generator=g, dtype=torch.float64)
    return a.to(DEVICE, dtype), b.to(DEVICE, dtype)


def _sde_step(a, b, **kwargs):
    a, b = a.detach().requires_grad_(True), b.detach().requires_grad_(True)
    loss = SDELoss(10, generator=torch.Generator(device=DEVICE).manual_seed(0), **kwargs)(a, b, step=3)
    return loss, torch.autograd.grad(loss.float(), (a, b))


@pytest.mark.parametrize("inputs", ["float32", "low"])
@pytest.mark.parametrize("dtype", LOW, ids=param_id)
def test_sde_loss_under_autocast(dtype, inputs):
    a, b = _features(torch.float32 if inputs == "float32" else dtype)
    want, want_g = _sde_step(a, b)
    with torch.autocast(DEVICE.type, dtype=dtype):
        got, got_g = _sde_step(a, b)
    atol, rtol = (3e-2, 3e-2) if dtype == torch.bfloat16 else (5e-3, 5e-3)
    _assert_scaled_close(got, want, atol, rtol, "SDELoss")
    for t, g in zip((a, b), got_g):
        assert g.dtype == t.dtype
    _assert_scaled_close(got_g, want_g, atol, rtol, "SDELoss gradient")


@pytest.mark.parametrize("kwargs, name", [
    ({"rho": -0.1}, "rho"), ({"rho": math.nan}, "rho"), ({"lambda_start": 1.5}, "lambda_start"),
    ({"lambda_start": math.nan}, "lambda_start"), ({"lambda_end": -0.1}, "lambda_end"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": math.inf}, "temperature"),
    ({"power": 0}, "power"), ({"power": math.nan}, "power"), ({"eps_strong": -1.0}, "eps_strong"),
    ({"gamma_weak": math.inf}, "gamma_weak"), ({"gamma_noise": math.nan}, "gamma_noise"),
    ({"k_sub": 0}, "k_sub")])
def test_sde_loss_rejects_out_of_range_arguments(kwargs, name):
    with pytest.raises(ValueError, match=_named(name)):
        SDELoss(10, **kwargs)


@pytest.mark.parametrize("kwargs, name", [({"k_sub": 2.5}, "k_sub"), ({"total_steps": 10.5}, "total_steps")])
def test_sde_loss_rejects_non_integers(kwargs, name):
    with pytest.raises(TypeError, match=_named(name)):
        SDELoss(**{"total_steps": 10, **kwargs})


@pytest.mark.parametrize("which", ["image_features", "text_features"])
def test_sde_loss_debug_names_the_argument(which, monkeypatch):
    a, b = _features(torch.float32)
    feats = {"image_features": a, "text_features": b}
    feats[which] = feats[which].clone()
    feats[which][0, 0] = float("nan")
    monkeypatch.setattr(core, "DEBUG", True)
    with pytest.raises(ValueError, match=_named(which)):
        SDELoss(10)(feats["image_features"], feats["text_features"])
