"""torch.compile(fullgraph=True) of every module in sdekernels.nn: forward and backward trace without a
graph break and equal eager. Small shapes; the aot_eager backend (dynamo and AOT autograd, no code
generation) for the options, and inductor for the default SDELoss (its first compile costs ~25 s here)."""
import pytest
import torch
from torch import nn

import sdekernels.nn as snn


def _grads(fn, args, leaves):
    flat = [t for t in torch.utils._pytree.tree_leaves(fn(*args)) if isinstance(t, torch.Tensor)]
    total = sum(t.float().square().sum() for t in flat)
    return [t.detach() for t in flat], torch.autograd.grad(total, leaves, allow_unused=True)


def _check(module, *args, backend="aot_eager", calls=1, atol=1e-5, rtol=1e-5, kwargs=lambda i: {}):
    """The module and its compiled self, called `calls` times (kwargs(i): the keywords of call i), give the
    same outputs and gradients with respect to every tensor argument and parameter."""
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad] + [
        p for p in module.parameters() if p.requires_grad]
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    try:
        for i in range(calls):
            want = _grads(lambda *a: module(*a, **kwargs(i)), args, leaves)  # noqa: B023 (called at once)
            got = _grads(lambda *a: compiled(*a, **kwargs(i)), args, leaves)  # noqa: B023
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    finally:
        torch._dynamo.reset()


def _features(m=32, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, 3, generator=g) @ torch.randn(3, n, generator=g) + 0.3 * torch.randn(m, n, generator=g)
    b = a + 0.3 * torch.randn(m, n, generator=g)
    return a.requires_grad_(), b.requires_grad_()


OPTIONS = [{}, {"center": True}, {"mode": "augment"}, {"gather": True, "local_loss": True},
           {"weighted_subspace": True}, {"k_sub": 3, "spectral_terms": ("subspace",)}]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_sde_loss(options):
    """Two steps (the step changes t, α and λ; the second call traces t symbolically) with a learnable scale."""
    a, b = _features()
    s = torch.tensor(12.0, requires_grad=True)
    loss = snn.SDELoss(10, **options)
    _check(loss, a, b, s, calls=2, kwargs=lambda i: {"step": 3 + i})


def test_sde_loss_inductor():
    a, b = _features()
    _check(snn.SDELoss(10), a, b, torch.tensor(12.0, requires_grad=True), backend="inductor", atol=1e-4, rtol=1e-4,
           kwargs=lambda i: {"step": 2})


def test_siglip_loss():
    a, b = _features()
    _check(snn.SigLipLoss(), a, b, torch.tensor(10.0, requires_grad=True), torch.tensor(-2.0, requires_grad=True))


def test_spectrum_modules():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 16, 16, generator=g, requires_grad=True)
    x = torch.rand(2, 3, 32, 32, generator=g)
    _check(snn.ESMLoss(bins=8), z, x)
    _check(snn.BlockDCTLowpass(k=8), z)
    _check(snn.DoG(), z)


def _layers(n, d, heads=2):
    return nn.ModuleList(nn.TransformerEncoderLayer(d, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
                         for _ in range(n))


def test_farl_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    tokens = snn.FourierAttentiveTokens(3, 8, n_tokens=2, patch=4, heads=2)
    _check(tokens, x)
    for branches in ("amplitude", "phase"):  # one branch, the other's output a constant zero
        _check(snn.FourierAttentiveTokens(3, 8, n_tokens=2, patch=4, heads=2, phase="angle", branches=branches), x)
    text = snn.DeepPromptEncoder(_layers(3, 16), depth=2, d_model=16, prompt_dim=8, position=1)
    _check(text, torch.randn(2, 6, 16, requires_grad=True), torch.randn(2, 2, 8, requires_grad=True))
    image = snn.DeepPromptEncoder(_layers(2, 12), depth=1, d_model=12, prompt_dim=8)
    model = snn.FARLPromptedEncoders(tokens, text, image).eval()
    _check(model, x, torch.randn(5, 6, 16), torch.randn(2, 9, 12))


def test_opcheck_of_the_loss_ops():
    """The custom ops SDELoss adds (decompose, enhance_decomposed, seeded_xi): schema, fake kernels that
    match the real ones (shapes, dtypes, strides), autograd registration."""
    from sdekernels.ops import enhance, svd
    from sdekernels.ops._partition import _seeded_xi

    a, _ = _features(m=10, n=7)
    F = a.detach().double().requires_grad_()
    for X in (F, F.mT.contiguous().detach().requires_grad_()):
        torch.library.opcheck(svd._decompose, (X,))
        d = svd.decompose(X.detach())
        part = svd.spectral_partition(d.S, *X.shape[-2:])
        xi = torch.rand(d.S.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        args = (X, *(t.detach().requires_grad_() for t in d), part.n_strong, part.n_weak, xi, 0.4, 0.1, 0.3, 0.9, 0.5)
        torch.library.opcheck(enhance._enhance_decomposed, args)
    torch.library.opcheck(_seeded_xi, ([d.S.detach(), d.S.detach().float()], 7))
