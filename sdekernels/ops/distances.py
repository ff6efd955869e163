"""Spectral distances (SPEC §5): `hellinger` and `subspace_distance`.

Forward: a Triton kernel (CUDA, or CPU under the interpreter) or ATen on CPU.
Backward: csrc/cpu/distances.cpp and csrc/cuda/distances.cu, through `torch.ops.sdekernels_C`.
Reference: reference/distances.py. Tests: python_tests/test_ops.py (generic, from the entries below).
"""
import torch
from torch import Tensor

from . import _triton as kt
from .. import _ext
from .._fallback import ref
from .._core import (HAS_TRITON, check, check_domain, check_real, check_shape, cuda_like, grad_like, next_pow2,
                     pow2_scale, ref_vjp, rows, use_triton, work_dtype)
from ..registry import F64, OpInfo, Sample, rand, randn, register

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import HELLINGER_PROB_FLOOR, HELLINGER_SCALE_LOG2, HELLINGER_SUM_FLOOR, mma

    @triton.jit
    def _spow(s, power, POWER_ONE: tl.constexpr):
        if POWER_ONE:  # a negative value has no S^power: NaN (as the reference)
            return tl.where(s >= 0, s, float("nan"))
        return tl.where(s > 0, tl.exp(power * tl.log(tl.where(s > 0, s, 1.0))), tl.where(s == 0, 0.0, float("nan")))

    @triton.jit
    def _pow2_inverse(t, ACC: tl.constexpr):
        """1/c for the power of two c with t/c in [1, 2), from t's exponent bits (exact; c and 1/c
        stay normal numbers)."""
        if ACC == tl.float64:
            e = ((t.to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
            e = tl.minimum(tl.maximum(e, -1022), 1022)
            return ((1023 - e) << 52).to(tl.float64, bitcast=True)
        else:
            e = ((t.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
            e = tl.minimum(tl.maximum(e, -126), 126)
            return ((127 - e) << 23).to(tl.float32, bitcast=True)

    @triton.jit
    def _row_unit(X, r, power, ACC: tl.constexpr, BLOCK: tl.constexpr):
        """1/c for a row, as the C++ and CUDA kernels' hellinger_row_scale: the power of two c with
        max/c in [1, 2) where the row's largest S^power lies outside [2^-40, 2^40] (only there can
        scaling change a result), else 1. A row is so taken at any scale, exactly."""
        top = tl.zeros([BLOCK], ACC)
        for start in range(0, r, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            top = tl.maximum(top, tl.load(X + idx, mask=idx < r, other=0).to(ACC))
        t = tl.max(top, 0)
        far = (t > 0) & (t - t == 0) & (tl.abs(tl.log2(tl.where(t > 0, t, 1.0)) * power) > HELLINGER_SCALE_LOG2)
        return tl.where(far, _pow2_inverse(tl.where(far, t, 1.0), ACC), 1.0)

    @triton.jit
    def _hellinger_kernel(A, B, OUT, r, sa, sb, power, POWER_ONE: tl.constexpr, SQUARED: tl.constexpr,
                          ACC: tl.constexpr, BLOCK: tl.constexpr):
        # One program per row (row strides sa, sb; unit column stride): pass 0 finds each row's
        # scale, pass 1 sums S^power of both spectra, pass 2 the Bhattacharyya sum.
        row = tl.program_id(0).to(tl.int64)
        a_row, b_row = A + row * sa, B + row * sb
        ua, ub = _row_unit(a_row, r, power, ACC, BLOCK), _row_unit(b_row, r, power, ACC, BLOCK)
        za = tl.zeros([BLOCK], ACC)
        zb = tl.zeros([BLOCK], ACC)
        for start in range(0, r, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            mask = idx < r
            za += _spow(tl.load(a_row + idx, mask=mask, other=0).to(ACC) * ua, power, POWER_ONE)
            zb += _spow(tl.load(b_row + idx, mask=mask, other=0).to(ACC) * ub, power, POWER_ONE)
        za_s, zb_s = tl.sum(za, 0), tl.sum(zb, 0)
        za_c = tl.maximum(za_s, HELLINGER_SUM_FLOOR)
        zb_c = tl.maximum(zb_s, HELLINGER_SUM_FLOOR)
        bc = tl.zeros([BLOCK], ACC)
        for start in range(0, r, BLOCK):
            idx = start + tl.arange(0, BLOCK)
            mask = idx < r
            p = tl.maximum(_spow(tl.load(a_row + idx, mask=mask, other=0).to(ACC) * ua, power, POWER_ONE) / za_c,
                           HELLINGER_PROB_FLOOR)
            q = tl.maximum(_spow(tl.load(b_row + idx, mask=mask, other=0).to(ACC) * ub, power, POWER_ONE) / zb_c,
                           HELLINGER_PROB_FLOOR)
            bc += tl.where(mask, tl.sqrt(p * q), 0.0)
        h2 = 1.0 - tl.sum(bc, 0)
        # A NaN or Inf sum (a negative or non-finite value) makes the row NaN, as in the reference
        # (explicitly: a GPU's maximum returns the non-NaN operand).
        h2 = tl.where((za_s - za_s == 0) & (zb_s - zb_s == 0), h2, float("nan"))
        if not SQUARED:
            h2 = tl.sqrt(tl.maximum(h2, 0.0))
        tl.store(OUT + row, h2.to(OUT.dtype.element_ty))

    @triton.jit(do_not_specialize=["n", "k", "n_per_split", "tiles_j"])
    def _cross_gram_kernel(VA, VB, OUT, n, k, sar, san, sbr, sbn, n_per_split, tiles_j, PRECISION: tl.constexpr,
                           ACC: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BN: tl.constexpr):
        # Program (row, tile, split) forms one BI×BJ tile of M = V_aᵀ V_b over its slice of the n
        # rows and stores it in OUT[row, split]: only k×k tiles, never an n×n matrix. V_a, V_b [R, n, k]
        # with strides (sar, san, 1), (sbr, sbn, 1): column slices such as V[..., :k] are read in place. Splitting n
        # keeps a GPU busy when there are few matrices; partials are summed in a fixed order.
        row = tl.program_id(0).to(tl.int64)
        tile, split = tl.program_id(1), tl.program_id(2)
        i = (tile // tiles_j) * BI + tl.arange(0, BI)
        j = (tile % tiles_j) * BJ + tl.arange(0, BJ)
        va, vb = VA + row * sar, VB + row * sbr
        lo = split * n_per_split
        hi = tl.minimum(lo + n_per_split, n)
        acc = tl.zeros([BI, BJ], ACC)
        for start in range(lo, hi, BN):
            m = start + tl.arange(0, BN)
            at = tl.load(va + i[:, None] + m[None, :] * san, mask=(m[None, :] < hi) & (i[:, None] < k), other=0)
            b = tl.load(vb + m[:, None] * sbn + j[None, :], mask=(m[:, None] < hi) & (j[None, :] < k), other=0)
            acc = mma(acc, at, b, PRECISION)
        out = OUT + (row * tl.num_programs(2) + split) * k * k
        tl.store(out + i[:, None] * k + j[None, :], acc, mask=(i[:, None] < k) & (j[None, :] < k))


# ---------------------------------------------------------------- hellinger


def _hellinger_triton(S_a: Tensor, S_b: Tensor, power: float, squared: bool) -> Tensor:
    a, b = rows(S_a, 1), rows(S_b, 1)
    out = torch.empty(a.shape[0], device=a.device, dtype=a.dtype)
    r = a.shape[1]
    if out.numel():
        _hellinger_kernel[(a.shape[0],)](a, b, out, r, a.stride(0), b.stride(0), power, POWER_ONE=power == 1.0,
                                         SQUARED=squared, ACC=kt.acc(a.dtype), BLOCK=min(next_pow2(r), 1024))
    return out.reshape(S_a.shape[:-1])


def _unit_rows(S: Tensor):
    """(S / c, c) with c each row's power of two (exact): p and w are unchanged, Σ (S/c)^power ≥ 1, so
    the kernels' floors of the sum never act (SPEC §10: relative, not absolute) and S^power never
    overflows; gradients with respect to S are those with respect to S/c, divided by c."""
    c = pow2_scale(S, (-1,))
    return S.to(c.dtype) / c, c


@torch.library.custom_op("sdekernels::hellinger", mutates_args=())
def _hellinger(S_a: Tensor, S_b: Tensor, power: float, squared: bool) -> Tensor:
    if use_triton(S_a):
        return _hellinger_triton(S_a, S_b, power, squared)  # the kernel scales each row itself
    if S_a.device.type == "cpu" and _ext.available():
        # one pass per row, vectorised (csrc/cpu/distances.cpp); it scales each row and gives NaN
        # for a row outside the domain itself, so S is read once
        a, b = (S.to(work_dtype(S.dtype)) for S in (S_a, S_b))
        return torch.ops.sdekernels_C.hellinger_fwd(a, b, power, squared).to(S_a.dtype)
    return ref.hellinger(S_a, S_b, power=power, squared=squared)


@_hellinger.register_fake
def _(S_a, S_b, power, squared):
    return S_a.new_empty(S_a.shape[:-1])


@torch.library.custom_op("sdekernels::hellinger_backward", mutates_args=())
def _hellinger_backward(S_a: Tensor, S_b: Tensor, grad: Tensor, power: float, squared: bool) -> tuple[Tensor, Tensor]:
    w = work_dtype(S_a.dtype)
    if _ext.available():  # both twins scale each row and give NaN rows outside the domain themselves
        da, db = torch.ops.sdekernels_C.hellinger_bwd(S_a.to(w), S_b.to(w), grad.to(w), power, squared)
        return grad_like(da, S_a), grad_like(db, S_b)
    (a, ca), (b, cb) = _unit_rows(S_a), _unit_rows(S_b)
    da, db = ref_vjp(ref.hellinger, (a, b), grad.to(w), power=power, squared=squared)
    # A row with a negative or NaN value has a NaN distance (no S^power): NaN gradients, on every path.
    ok = (a >= 0).all(-1, keepdim=True) & (b >= 0).all(-1, keepdim=True)
    da, db = torch.where(ok, da, float("nan")), torch.where(ok, db, float("nan"))
    return grad_like(da / ca, S_a), grad_like(db / cb, S_b)


@_hellinger_backward.register_fake
def _(S_a, S_b, grad, power, squared):
    return torch.empty_like(S_a), torch.empty_like(S_b)


def _hellinger_setup(ctx, inputs, output):
    S_a, S_b, ctx.power, ctx.squared = inputs
    ctx.save_for_backward(S_a, S_b)


def _hellinger_grad(ctx, grad):
    S_a, S_b = ctx.saved_tensors
    return (*_hellinger_backward(S_a, S_b, grad, ctx.power, ctx.squared), None, None)


_hellinger.register_autograd(_hellinger_grad, setup_context=_hellinger_setup)


def hellinger(S_a: Tensor, S_b: Tensor, *, power: float = 1, squared: bool = True) -> Tensor:
    """Hellinger distance between the normalised spectra p ∝ S_a^power and q ∝ S_b^power (SPEC §5).

    S_a, S_b: [..., r] non-negative (singular values). Returns H² = 1 − Σ√(p q) of shape [...]
    (or H when squared=False). The gradient is finite for every finite non-negative input and 0 at p = q.
    A row with a negative value (outside the domain: S^power is undefined) gives NaN and NaN gradients
    on every path; debug mode (SDEKERNELS_DEBUG=1) raises a ValueError instead (a value check costs
    a device sync, so it is not made otherwise).
    """
    check(S_a, "S_a")
    check(S_b, "S_b", like=S_a)
    check_shape(S_b, "S_b", S_a.shape, " (that of S_a)")
    check_domain(S_a, "S_a", lambda s: s >= 0, "non-negative")
    check_domain(S_b, "S_b", lambda s: s >= 0, "non-negative")
    power = check_real(power, "power", 0.0, open_lo=True)
    return _hellinger(S_a, S_b, power, bool(squared))


# ---------------------------------------------------------------- subspace_distance


def _weights(S: Tensor) -> Tensor:
    s2 = _unit_rows(S)[0] ** 2  # w = S²/ΣS², no overflow of S² at any scale
    return s2 / s2.sum(-1, keepdim=True).clamp_min(torch.finfo(s2.dtype).tiny)


def _subspace_from_m(M: Tensor, w_a: Tensor | None, w_b: Tensor | None) -> Tensor:
    """SPEC §5 from M = V_aᵀV_b: 1 − ‖M‖²/k, or ‖w_a‖² + ‖w_b‖² − 2 Σ w_a,i w_b,j M_ij²."""
    m2 = M * M
    if w_a is None:
        return 1.0 - m2.sum((-2, -1)) / M.shape[-1]
    cross = (m2 * w_a.unsqueeze(-1) * w_b.unsqueeze(-2)).sum((-2, -1))
    return (w_a * w_a).sum(-1) + (w_b * w_b).sum(-1) - 2.0 * cross


def _cross_gram_triton(V_a: Tensor, V_b: Tensor) -> Tensor:
    """M = V_aᵀ V_b [..., k, k] accumulated in float32 (float64 for float64 input)."""
    n, k = V_a.shape[-2:]
    va, vb = rows(V_a, 2), rows(V_b, 2)
    R = va.shape[0]
    bk = kt.tile(k, 64)
    bn = 64 if va.dtype in kt.LOW else 32
    tiles = triton.cdiv(k, bk)
    programs = max(R * tiles * tiles, 1)
    # Enough programs to fill the GPU (4 per multiprocessor); the plain interpreter gains nothing from more.
    target = 4 * kt.sm_count(va) if cuda_like(va) else programs
    splits = max(1, min(triton.cdiv(target, programs), triton.cdiv(n, 256)))
    n_per = triton.cdiv(triton.cdiv(n, splits), bn) * bn
    splits = triton.cdiv(n, n_per)
    acc = work_dtype(va.dtype)
    part = torch.empty((R, splits, k, k), device=va.device, dtype=acc)
    if R:
        _cross_gram_kernel[(R, tiles * tiles, splits)](va, vb, part, n, k, *va.stride()[:2], *vb.stride()[:2], n_per,
                                                       tiles, PRECISION=kt.precision(va.dtype), ACC=kt.acc(acc),
                                                       BI=bk, BJ=bk, BN=bn)
    return part.sum(1).reshape(V_a.shape[:-2] + (k, k))


@torch.library.custom_op("sdekernels::subspace_distance", mutates_args=())
def _subspace(V_a: Tensor, V_b: Tensor, S_a: Tensor | None, S_b: Tensor | None) -> Tensor:
    w = work_dtype(V_a.dtype)
    w_a = _weights(S_a.to(w)) if S_a is not None else None
    w_b = _weights(S_b.to(w)) if S_b is not None else None
    M = _cross_gram_triton(V_a, V_b) if use_triton(V_a) else V_a.to(w).mT @ V_b.to(w)
    return _subspace_from_m(M.to(w), w_a, w_b).to(V_a.dtype)


@_subspace.register_fake
def _(V_a, V_b, S_a, S_b):
    return V_a.new_empty(V_a.shape[:-2])


def _subspace_ref_m(V_a, V_b, S_a=None, S_b=None):
    """The M-form of SPEC §5 in autograd (fallback backward; equals the reference for orthonormal V)."""
    w_a = _weights(S_a) if S_a is not None else None
    w_b = _weights(S_b) if S_b is not None else None
    return _subspace_from_m(V_a.mT @ V_b, w_a, w_b)


@torch.library.custom_op("sdekernels::subspace_distance_backward", mutates_args=())
def _subspace_backward(V_a: Tensor, V_b: Tensor, grad: Tensor, S_a: Tensor | None,
                       S_b: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = work_dtype(V_a.dtype)
    cast = [None if t is None else t.to(w) for t in (V_a, V_b, grad)]
    scales = [None, None] if S_a is None else [_unit_rows(S) for S in (S_a, S_b)]  # w is unchanged by S/c
    cast += [None if sc is None else sc[0] for sc in scales]
    if _ext.available():
        dva, dvb, dsa, dsb = torch.ops.sdekernels_C.subspace_bwd(*cast)
    else:
        dva, dvb, dsa, dsb = ref_vjp(_subspace_ref_m, cast[:2] + cast[3:], cast[2])
    if S_a is not None:
        dsa, dsb = dsa / scales[0][1], dsb / scales[1][1]
    return tuple(grad_like(g, t) if t is not None else V_a.new_empty(0)
                 for g, t in ((dva, V_a), (dvb, V_b), (dsa, S_a), (dsb, S_b)))


@_subspace_backward.register_fake
def _(V_a, V_b, grad, S_a, S_b):
    return tuple(torch.empty_like(t) if t is not None else V_a.new_empty(0) for t in (V_a, V_b, S_a, S_b))


def _subspace_setup(ctx, inputs, output):
    ctx.weighted = inputs[2] is not None
    ctx.save_for_backward(*inputs)


def _subspace_grad(ctx, grad):
    V_a, V_b, S_a, S_b = ctx.saved_tensors
    dva, dvb, dsa, dsb = _subspace_backward(V_a, V_b, grad, S_a, S_b)
    return (dva, dvb, dsa, dsb) if ctx.weighted else (dva, dvb, None, None)


_subspace.register_autograd(_subspace_grad, setup_context=_subspace_setup)


def subspace_distance(V_a: Tensor, V_b: Tensor, *, S_a: Tensor | None = None, S_b: Tensor | None = None) -> Tensor:
    """Distance between the subspaces spanned by the orthonormal columns of V_a, V_b [..., n, k] (SPEC §5).

    Unweighted: 1 − ‖V_aᵀV_b‖²_F / k ∈ [0, 1]. With S_a, S_b [..., k] the projectors are weighted
    by w = S²/ΣS². Computed through the k×k product V_aᵀV_b; never forms an n×n matrix.
    """
    check(V_a, "V_a", min_dim=2)
    check(V_b, "V_b", min_dim=2, like=V_a)
    check_shape(V_b, "V_b", V_a.shape, " (that of V_a)")
    if V_a.shape[-1] == 0 or V_a.shape[-1] > V_a.shape[-2]:
        raise ValueError(f"V_a must be [..., n, k] with 1 <= k <= n, got shape {tuple(V_a.shape)}")
    if (S_a is None) != (S_b is None):
        raise ValueError("S_a and S_b must be given together (weighted) or both omitted")
    if S_a is not None:
        for S, name in ((S_a, "S_a"), (S_b, "S_b")):
            check(S, name, like=V_a)
            check_shape(S, name, V_a.shape[:-2] + V_a.shape[-1:], " (V_a's batch and k)")
    return _subspace(V_a, V_b, S_a, S_b)


# ---------------------------------------------------------------- registry entries


def _spectra(shape, device, dtype, gen):
    size = (*([shape["batch"]] if shape.get("batch") else []), shape["r"])
    S_a = rand(size, device, dtype, gen, 0.05, 2.0).sort(-1, descending=True).values
    S_b = rand(size, device, dtype, gen, 0.05, 2.0).sort(-1, descending=True).values
    return Sample((S_a, S_b), {"power": shape.get("power", 1), "squared": shape.get("squared", True)})


def _bad_hellinger(device):
    S = torch.rand(3, 8, device=device)
    return [((S.numpy() if device.type == "cpu" else S.tolist(), S), {}, "S_a"),
            ((S, S[:, :4]), {}, "S_b"),
            ((S, S.double()), {}, "S_b"),
            ((S, torch.ones(3, 8, dtype=torch.int64, device=device)), {}, "S_b"),
            ((S, S), {"power": 0}, "power"), ((S, S), {"power": float("inf")}, "power"),
            ((S, S), {"power": float("nan")}, "power"), ((S, S), {"power": -1.0}, "power"),
            ((S[:, :0], S[:, :0]), {}, "S_a")]


def _negative_spectra(device):
    S = torch.rand(3, 8, device=device)
    neg = S.clone()
    neg[1, 2] = -0.5
    return [((neg, S), {}, "S_a"), ((S, neg), {"power": 2}, "S_b")]


register(OpInfo(
    name="hellinger", op=hellinger, ref=ref.hellinger, make=_spectra,
    gpu_shape={"batch": 4, "r": 1500, "power": 2},
    # forward: H = √(1 − Σ√(p q)), whose cancellation amplifies the sums' rounding by 1/(2H²); backward:
    # the same 1/(2H) scales every entry, so relative to the largest it is not amplified
    cond=(16384, 64),
    scaling=lambda sh: ((0, 1), (0,)),
    shapes=[{"batch": 0, "r": 1}, {"batch": 5, "r": 7}, {"batch": 3, "r": 300, "squared": False},
            {"batch": 4, "r": 1500, "power": 2}, {"batch": 2, "r": 33, "power": 0.5}],
    space={"batch": (0, 6), "r": (1, 2100)},
    bad=_bad_hellinger, debug_bad=_negative_spectra,
    bench=[{"batch": 1024, "r": 512, "quick": True, "backward": True}, {"batch": 8192, "r": 1024},
           {"batch": 8192, "r": 1024, "backward": True}],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(), 8 * s.args[0].numel()),
    tol={F64: (1e-12, 1e-10), torch.float32: (2e-6, 1e-5), torch.bfloat16: (1e-2, 2e-2), torch.float16: (1e-3, 5e-3)},
))


def _orthonormal(args, kwargs):
    """QR keeps the bases orthonormal (gradients flow to the unconstrained leaves)."""
    q = lambda x: torch.linalg.qr(x.to(work_dtype(x.dtype)))[0].to(x.dtype)  # noqa: E731
    return (q(args[0]), q(args[1])), kwargs


def _bases(shape, device, dtype, gen):
    b = [shape["batch"]] if shape.get("batch") else []
    X_a = randn((*b, shape["n"], shape["k"]), device, dtype, gen)
    X_b = randn((*b, shape["n"], shape["k"]), device, dtype, gen)
    kwargs = {}
    if shape.get("weighted"):
        kwargs = {name: rand((*b, shape["k"]), device, dtype, gen, 0.1, 2.0) for name in ("S_a", "S_b")}
    return Sample((X_a, X_b), kwargs, prep=_orthonormal)


def _bad_subspace(device):
    V = torch.linalg.qr(torch.randn(2, 16, 4, device=device))[0]
    S = torch.rand(2, 4, device=device)
    return [((V[0, 0], V[0, 0]), {}, "V_a"),
            ((V, V[:, :8]), {}, "V_b"),
            ((V, V.half()), {}, "V_b"),
            ((V.mT, V.mT), {}, "V_a"),
            ((V, V), {"S_a": S}, "S_a"),
            ((V, V), {"S_a": S, "S_b": S[:, :2]}, "S_b")]


register(OpInfo(
    name="subspace_distance", op=subspace_distance, ref=ref.subspace_distance, make=_bases,
    gpu_shape={"batch": 0, "n": 600, "k": 20, "weighted": True},
    cond=(16, 64),  # sums of k² products of orthonormal columns, backward two GEMMs around a k×k kernel
    scaling=lambda sh: ((0, 1, 2, 3), (0,)),  # QR of s·X has the same Q; w = S²/ΣS²
    shapes=[{"batch": 0, "n": 1, "k": 1}, {"batch": 3, "n": 40, "k": 5},
            {"batch": 2, "n": 70, "k": 20, "weighted": True}, {"batch": 0, "n": 100, "k": 100},
            {"batch": 2, "n": 300, "k": 17}],
    space={"batch": (0, 3), "n": (1, 120), "k": (1, 24), "weighted": (0, 1)},
    bad=_bad_subspace, valid=lambda sh: sh["k"] <= sh["n"],
    bench=[{"batch": 0, "n": 4096, "k": 64, "quick": True}, {"batch": 64, "n": 1024, "k": 64},
           {"batch": 16, "n": 4096, "k": 64, "weighted": True}],
    cost=lambda s: (2 * s.args[0].numel() * s.args[0].element_size(), 2 * s.args[0].numel() * s.args[0].shape[-1]),
))
