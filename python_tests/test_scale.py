"""Every scale (SPEC §10), for every registered op that declares its homogeneity (OpInfo.scaling:
out(s·x) = s^d·out(x)): the op at s = 10^k, k across the dtype's range, forward and gradients,
against the reference on the unscaled input (the expectation is rescaled by s^d, so it never
leaves the range of float64). Results whose scaled truth is not representable in the dtype are
skipped. And one huge but finite batch element never changes its neighbours, bit for bit."""
import math

import pytest
import torch

from sdekernels.registry import BF16, F16, F32, F64, all_ops

from helpers import DEVICE, PATHS, cases, flat, on_path, param, param_id

OPS = all_ops()
SCALED = sorted(name for name, info in OPS.items() if info.scaling)
KS = {F64: (-300, -200, -100, -30, -16, -8, 8, 16, 30, 100, 200, 300), F32: (-35, -30, -19, -10, 10, 19, 30, 35),
      BF16: (-30, -10, 10, 30), F16: (-3, 3)}
GRAD_DTYPES = (F64, F32)


def _shape(info):
    """The first sample with a batch of at least 2 (else the typical sample)."""
    return info.batched_shape(2, key=info.batch_key or "batch") or info.typical_shape


def _case(info, shape, dtype, k):
    """(leaves of the op's sample at s = 10^k in dtype, leaves of the same values unscaled in float64,
    scaled positions, output degrees)."""
    # the same draws in dtype and in float64 (a sample's prep may hold tensors of its dtype)
    sample, exact = (info.make(shape, DEVICE, d, torch.Generator().manual_seed(0)) for d in (dtype, F64))
    pos, degrees = info.scaling(shape)
    s = 10.0 ** k
    xs = sample.with_tensors([(t * s if i in pos else t).to(dtype) for i, t in enumerate(exact.tensors())])
    xu = exact.with_tensors([t.double() / s if i in pos else t.double() for i, t in enumerate(xs.tensors())])
    return info.leaves(xs), info.leaves(xu), pos, degrees


def _ratio(got, want, k, degree, dtype, atol, rtol):
    """Worst |got/10^(k·degree) − want| / (atol + rtol·|want|), or None where the scaled truth
    leaves the dtype's normal range (not representable)."""
    want, got = want.detach().double().cpu(), got.detach().double().cpu()
    if not _representable(want, k * degree, dtype):
        return None
    got = _unscaled(got, k * degree)
    err = torch.where(torch.isnan(got) & torch.isnan(want), 0.0, (got - want).abs()).nan_to_num(float("inf"))
    return float((err / (atol + rtol * want.abs())).max()) if err.numel() else 0.0


def _representable(want, e, dtype):
    """Is 10^e·want inside the dtype's normal range (or 0)?"""
    fin = torch.finfo(dtype)
    top = float(want.abs().nan_to_num(0.0).max()) if want.numel() else 0.0
    return top == 0 or math.log10(fin.tiny) + 3 < math.log10(top) + e < math.log10(fin.max) - 1


def _unscaled(got, e):
    """got / 10^e in float64 (in two steps when 10^e alone leaves the float64 range)."""
    return got / 10.0 ** (e / 2) / 10.0 ** (e / 2) if e else got


def _weights(outs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=F64).to(o.device, o.dtype) for o in outs]


def _grads(out, leaves, w):
    diff = [t for t in leaves.tensors() if t.requires_grad]
    return torch.autograd.grad(out, diff, w, allow_unused=True), [i for i, t in enumerate(leaves.tensors())
                                                                   if t.requires_grad]


def _grad_error(g, r):
    """Normwise error max|g − r| / max|r| (float64)."""
    g, r = g.double().cpu(), r.double().cpu()
    top = float(r.abs().max())
    return float((g - r).abs().max()) / top if top > 0 else float((g - r).abs().max())


def _check_scales(info, shape, dtype, path, ks):
    atol, rtol = info.tol[dtype]
    grads = info.differentiable and dtype in GRAD_DTYPES
    failures, base = [], {}
    for k in (0, *ks):
        xs, xu, pos, degrees = _case(info, shape, dtype, k)
        with on_path(path):
            got = flat(xs.call(info.op))
        want = flat(xu.call(info.ref))
        for i, (g, w, d) in enumerate(zip(got, want, degrees)):
            r = _ratio(g, w, k, d, dtype, atol, rtol)
            if r is not None and not r <= 1:
                failures.append(f"k={k} output {i}: {r:.3g}× the tolerance")
        if not grads:
            continue
        for i, d in enumerate(degrees):
            if not (got[i].is_floating_point() and got[i].requires_grad):
                continue
            with on_path(path):
                out = flat(xs.call(info.op))[i]
            wts = _weights([out])[0]
            gs, idx = _grads(out, xs, wts)
            rs, _ = _grads(flat(xu.call(info.ref))[i], xu, wts.double())
            for j, g, r in zip(idx, gs, rs):
                if r is None:
                    continue
                e = d - 1 if j in pos else d  # ∂out/∂x scales as s^(d-1) for a scaled x, s^d otherwise
                if g is None:
                    failures.append(f"k={k} output {i} input {j}: no gradient")
                    continue
                if dtype == F64:
                    ratio = _ratio(g, r, k, e, dtype, *info.grad_tol)
                    if ratio is not None and not ratio <= 1:
                        failures.append(f"k={k} gradient of output {i} wrt input {j}: {ratio:.3g}× the tolerance")
                    continue
                # float32: as accurate at every scale as at s = 1 (8× that error, or 1e-4 normwise)
                if not _representable(r, k * e, dtype):
                    continue
                err = _grad_error(_unscaled(g.double(), k * e), r)
                if k == 0:
                    base[(i, j)] = err
                elif not err <= max(8 * base[(i, j)], 1e-4):
                    failures.append(f"k={k} gradient of output {i} wrt input {j}: error {err:.3g} "
                                    f"(at s = 1: {base[(i, j)]:.3g})")
    return failures


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", list(KS), ids=param_id)
@pytest.mark.parametrize("name", SCALED)
def test_every_scale(name, dtype, path):
    info = OPS[name]
    shape = _shape(info)
    if info.scaling(shape) is None:
        pytest.skip("sample not homogeneous")
    failures = _check_scales(info, shape, dtype, path, KS[dtype])
    assert not failures, f"{name} {shape} {dtype} {path}:\n" + "\n".join(failures[:12])


def _other_samples(info):
    """The homogeneous samples besides test_every_scale's."""
    return [sh for sh in info.shapes if sh is not _shape(info) and info.scaling(sh) is not None]


@pytest.mark.parametrize("name,dtype,path,shape",
                         cases({n: OPS[n] for n in SCALED}, GRAD_DTYPES, PATHS, shapes=_other_samples))
def test_every_sample_at_the_extremes(name, dtype, path, shape):
    """Every other homogeneous sample (other options, other code paths) at the ends of the range."""
    info = OPS[name]
    failures = _check_scales(info, shape, dtype, path, KS[dtype][::len(KS[dtype]) - 1])
    assert not failures, f"{name} {shape} {dtype} {path}:\n" + "\n".join(failures[:12])


# ---------------------------------------------------------------- isolation of huge values

HUGE = {F64: 1e160, F32: 1e20}
# float32 above r = 256 takes the float32 Gram (svd.fast_gram): a huge element must not break it either.
WIDE = {"svd_topk": {"batch": 3, "m": 300, "n": 270, "k": 4}, "singular_values": {"batch": 3, "m": 270, "n": 300},
        "spectral_enhance": {"batch": 3, "m": 300, "n": 264, "s": 3, "t": 0.3}}


def _isolation_cases():
    """(name, dtype, path, shape): every batched op's batched sample, and the SVD ops' wide one in float32."""
    for name in SCALED:
        info = OPS[name]
        if info.batch_key is None:
            continue
        for dtype in HUGE:
            wide = [WIDE[name]] if name in WIDE and dtype == F32 else []
            for path in PATHS:
                for shape in (_shape(info), *wide):
                    yield param(name, dtype, path, shape)


@pytest.mark.parametrize("name,dtype,path,shape", list(_isolation_cases()))
def test_huge_element_leaves_neighbours_unchanged(name, dtype, path, shape):
    info = OPS[name]
    if (shape.get(info.batch_key) or 0) < 2:
        pytest.skip("no batched sample")
    if path == "triton" and shape is WIDE.get(name):
        pytest.skip("the interpreter is too slow at this size")
    sample = info.make(shape, DEVICE, dtype, torch.Generator().manual_seed(0))
    pos = info.scaling(shape)[0]
    huge = sample.with_tensors([t.clone() for t in sample.tensors()])
    for i, t in enumerate(huge.tensors()):
        if i in pos:
            t[0] *= HUGE[dtype]
    results = []
    for s in (sample, huge):
        leaves = info.leaves(s)
        with on_path(path):
            outs = flat(leaves.call(info.op))
            grads = ()
            if info.differentiable:
                float_outs = [o for o in outs if o.requires_grad]
                diff = [t for t in leaves.tensors() if t.requires_grad]
                grads = torch.autograd.grad(float_outs, diff, _weights(float_outs), allow_unused=True)
        results.append((outs, grads))
    (clean, gc), (dirty, gd) = results
    for i, (c, d) in enumerate(zip(clean, dirty)):
        assert torch.equal(c[1:], d[1:]), f"{name}: a huge element 0 changed output {i} of elements 1+"
    for i, (c, d) in enumerate(zip(gc, gd)):
        if c is not None and c.dim() and c.shape[0] == clean[0].shape[0]:
            # Outputs are bit-identical; a gradient may differ by rounding where a batched backward pads every
            # element to the batch's largest rank (spectral_enhance's k_max): the padded terms are exact zeros,
            # but the summation length changes, and the float32 eigenbasis (r > 256) amplifies that rounding.
            rel = 2e-4 if c.dtype == torch.float32 else 64 * torch.finfo(c.dtype).eps
            tol = rel * float(c[1:].abs().max())
            assert torch.allclose(c[1:], d[1:], rtol=0, atol=tol), \
                f"{name}: a huge element 0 changed the gradient {i} of elements 1+"
