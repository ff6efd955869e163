"""info_nce beyond the generic registry tests: the Triton backward (the generic gradient tests run
the backward outside the Triton context), chunk boundaries of the CPU path, its memory bound,
a learnable logit_scale, large logits and torch.compile."""
import pytest
import torch

import sdekernels
import sdekernels.ops.contrastive as C
import sdekernels.reference as ref

from helpers import PATHS, on_path


def _pairs(R, B, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(R, B, d, generator=g, dtype=torch.float64)
    z_b = 0.7 * z_a + torch.randn(R, B, d, generator=g, dtype=torch.float64)
    return z_a.to(dtype), z_b.to(dtype)


def _loss_and_grads(fn, z_a, z_b, path="aten", scale=None, **kw):
    leaves = [z_a.detach().clone().requires_grad_(), z_b.detach().clone().requires_grad_()]
    if scale is not None:
        leaves.append(torch.tensor(scale, dtype=z_a.dtype).requires_grad_())
        kw["logit_scale"] = leaves[-1]
    with on_path(path):  # forward and backward on the same path
        loss = fn(leaves[0], leaves[1], **kw)
        grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_backward_on_each_path(path, symmetric, normalize):
    z_a, z_b = _pairs(2, 50, 19)  # 50 rows: a partial last tile
    for scale in (None, 9.0):
        kw = dict(temperature=0.2, symmetric=symmetric, normalize=normalize, scale=scale)
        got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, path, **kw)
        want = _loss_and_grads(ref.info_nce, z_a, z_b, **kw)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("path", PATHS)
# 14: the CPU path takes exp(logits) directly; 60: the per-row maxima
@pytest.mark.parametrize("scale", [14.0, 60.0])
def test_float32_backward(path, scale):
    z_a, z_b = _pairs(1, 70, 40, torch.float32)
    got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, path, scale=scale)
    want = _loss_and_grads(ref.info_nce, z_a.double(), z_b.double(), scale=scale)
    torch.testing.assert_close([got[0], *got[1]], [want[0].float(), *(g.float() for g in want[1])],
                               atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("keep", [0, 1 << 24])
def test_chunk_boundaries(monkeypatch, keep):
    """Row chunks of the CPU path that do not divide B (the diagonal crosses chunk edges), with the
    logits recomputed by the backward or kept by the forward."""
    monkeypatch.setattr(C, "CHUNK_ELEMS", 7 * 45)  # 7 rows per chunk
    monkeypatch.setattr(C, "KEEP_ELEMS", keep)
    z_a, z_b = _pairs(3, 45, 6)
    for symmetric in (True, False):
        got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, scale=5.0, symmetric=symmetric)
        want = _loss_and_grads(ref.info_nce, z_a, z_b, scale=5.0, symmetric=symmetric)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def _peak_bytes(fn) -> int:
    """Peak CPU bytes allocated during fn(), from the profiler's raw allocation events (the per-op
    FunctionEvent totals include their children's and would count nested allocations twice)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    level = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                            if e.name() == "[memory]"):
        level += nbytes
        peak = max(peak, level)
    return peak


def test_cpu_memory_is_bounded_by_the_chunk(monkeypatch):
    """Forward + backward hold O(chunk·B + B·d), never the B×B logits."""
    B, d = 2048, 8
    monkeypatch.setattr(C, "CHUNK_ELEMS", 1 << 16)
    monkeypatch.setattr(C, "KEEP_ELEMS", 1 << 16)  # below B²: the path of a large batch
    z_a, z_b = (t.requires_grad_() for t in _pairs(1, B, d, torch.float32))

    def ours():
        sdekernels.info_nce(z_a, z_b).backward()

    def explicit():
        ref.info_nce(z_a, z_b).backward()

    logits_bytes = B * B * 4
    assert _peak_bytes(ours) < logits_bytes / 8
    assert _peak_bytes(explicit) > logits_bytes  # the profiler sees the explicit logits


def test_learnable_logit_scale_like_open_clip():
    """open_clip passes exp(log_scale): the gradient reaches the parameter through it."""
    z_a, z_b = _pairs(1, 33, 12)
    grads = []
    for fn in (sdekernels.info_nce, ref.info_nce):
        p = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        fn(z_a, z_b, logit_scale=p.exp()).backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)
    # a float logit_scale is the same as the equivalent temperature
    torch.testing.assert_close(sdekernels.info_nce(z_a, z_b, logit_scale=4.0), sdekernels.info_nce(z_a, z_b, 0.25))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e7])
def test_gradients_at_extreme_logit_scales(path, scale):
    """A tensor logit_scale outside the usual range (0 included: its domain check needs debug mode)
    still gets the reference's gradients, for the features and for itself."""
    z_a, z_b = _pairs(1, 33, 12)
    z_a, z_b = z_a[0].requires_grad_(), z_b[0].requires_grad_()
    grads = []
    for fn in (sdekernels.info_nce, ref.info_nce):
        s = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
        with on_path(path if fn is sdekernels.info_nce else "aten"):
            grads.append(torch.autograd.grad(fn(z_a, z_b, logit_scale=s), (z_a, z_b, s)))
    for g, r in zip(*grads):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, atol=1e-12 * max(1.0, float(r.abs().max())), rtol=1e-9)


@pytest.mark.parametrize("path", PATHS)
def test_large_logits_stay_finite(path):
    """s = 100 (open_clip's clamp) on nearly identical pairs: the online log-sum-exp does not overflow."""
    z_a, _ = _pairs(1, 40, 16, torch.float32)
    z_b = z_a + 1e-3
    got = _loss_and_grads(sdekernels.info_nce, z_a, z_b, path, scale=100.0)
    want = _loss_and_grads(ref.info_nce, z_a.double(), z_b.double(), scale=100.0)
    assert all(torch.isfinite(t).all() for t in (got[0], *got[1]))
    torch.testing.assert_close(got[0].double(), want[0], atol=1e-5, rtol=1e-4)


def test_degenerate_inputs():
    """Zero rows (normalised to 0) and a single pair give finite losses and gradients."""
    z = torch.zeros(5, 4, requires_grad=True)
    loss = sdekernels.info_nce(z, z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss, torch.log(torch.tensor(5.0)))
    # one pair: lse and the positive logit are both s·ẑ·ẑ (up to s), computed apart, so the loss is
    # 0 up to a few float32 roundings of s (not of 1)
    for one in torch.randn(64, 1, 3):
        assert float(sdekernels.info_nce(one, one)) == pytest.approx(0.0, abs=4 * torch.finfo().eps / 0.07)
    assert float(sdekernels.info_nce(one.double(), one.double())) == pytest.approx(0.0, abs=1e-13)


def test_compile_with_learnable_scale():
    z_a, z_b = _pairs(2, 24, 10, torch.float32)
    compiled = torch.compile(sdekernels.info_nce, fullgraph=True)
    out = []
    for fn in (sdekernels.info_nce, compiled):
        out.append(_loss_and_grads(fn, z_a, z_b, scale=10.0, symmetric=True))
    torch._dynamo.reset()
    torch.testing.assert_close(out[1], out[0], atol=1e-6, rtol=1e-5)


def test_gather_without_process_group_is_local():
    z_a, z_b = _pairs(1, 16, 8)
    torch.testing.assert_close(sdekernels.info_nce(z_a, z_b, gather=True), sdekernels.info_nce(z_a, z_b))


def _explicit_siglip_rows(a, b, s, t, off):
    """−Σ log σ(y·L) / rows for rows a against columns b, labels at column i + off (explicit)."""
    logits = s * torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).mT + t
    y = -torch.ones_like(logits)
    torch.diagonal(y, offset=off, dim1=-2, dim2=-1).fill_(1.0)
    return -torch.nn.functional.logsigmoid(y * logits).sum() / a.shape[-2]


@pytest.mark.parametrize("path", PATHS)
def test_local_rows_against_gathered_columns(path):
    """open_clip's local_loss layout: a rank's rows (here rows 20..39 of 50) against every column,
    labels offset by the rank's first row, on each path, against explicit logits in float64."""
    z_a, z_b = _pairs(1, 50, 19)
    z_a, z_b = z_a[0], z_b[0]
    off, n = 20, 20
    s = torch.tensor(9.0, dtype=torch.float64)
    t = torch.tensor(-4.0, dtype=torch.float64)
    for name in ("info_nce", "siglip"):
        grads = []
        for fused in (True, False):
            leaves = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_(), s.clone().requires_grad_(),
                      t.clone().requires_grad_()]
            A, Bc, sc, tb = leaves
            rows_a, rows_b = A[off:off + n], Bc[off:off + n]
            with on_path(path):
                if name == "info_nce":
                    if fused:
                        loss = C.local_info_nce(rows_a, rows_b, A, Bc, sc, off)
                    else:
                        loss = ref.local_info_nce(rows_a, rows_b, A, Bc, off, logit_scale=sc)
                    loss = loss + 0 * tb
                elif fused:
                    loss = C._siglip(rows_a, Bc, sc, tb, off, True, True)[0]
                else:
                    loss = _explicit_siglip_rows(rows_a, Bc, sc, tb, off)
                grads.append([loss.detach(), *torch.autograd.grad(loss, leaves)])
        torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10,
                                   msg=lambda m, name=name: f"{name} {path}: {m}")


def test_siglip_learnable_scale_and_bias_like_open_clip():
    """open_clip passes exp(log_scale) and a raw bias: the gradients reach both parameters."""
    z_a, z_b = _pairs(1, 33, 12)
    grads = []
    for fn in (sdekernels.siglip_loss, ref.siglip_loss):
        p = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
        q = torch.tensor(-7.0, dtype=torch.float64, requires_grad=True)
        fn(z_a, z_b, p.exp(), q).backward()
        grads.append(torch.stack([p.grad, q.grad]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)
    assert (grads[0] != 0).all()
    with torch.no_grad():  # no gradient wanted: the CPU path keeps none
        out = C._siglip(z_a, z_b, torch.tensor(10.0, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64),
                        0, True, False)
    assert all(t.numel() == 0 for t in out[1:])


def test_siglip_compile():
    z_a, z_b = _pairs(2, 24, 10, torch.float32)
    fn = lambda a, b, logit_scale: sdekernels.siglip_loss(a, b, logit_scale, -3.0)  # noqa: E731
    out = [_loss_and_grads(f, z_a, z_b, scale=10.0) for f in (fn, torch.compile(fn, fullgraph=True))]
    torch._dynamo.reset()
    torch.testing.assert_close(out[1], out[0], atol=1e-6, rtol=1e-5)
