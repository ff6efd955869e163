"""Parity with open_clip's own losses: info_nce, SDELoss (spectral term and enhancement off) and
siglip_loss against ClipLoss and SigLipLoss, in one process and in two gloo processes (local_loss
both ways, every rank seeded differently as open_clip does), and under bf16 autocast.

`import open_clip` needs torchvision, which cannot be installed beside our torch, so its loss.py
(which imports only torch) is loaded by file path from the installed package.
Features come from a linear encoder followed by F.normalize, as open_clip's models produce them:
our losses normalise again, which changes only the radial part of the feature gradient, and
that part vanishes through the model's own normalisation.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as Fn

import sdekernels
from sdekernels.bench import load_open_clip_loss
from sdekernels.nn import SDELoss, SigLipLoss

from helpers import PATHS, average_over_ranks, free_port, on_path, require

WORLD = 2
B, D_IN, D = 24, 12, 10


def open_clip_loss():
    module = load_open_clip_loss()
    require(module is not None, "open-clip-torch")
    return module


def _data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x_a = torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    x_b = 0.5 * x_a + torch.randn(B, D_IN, generator=g, dtype=torch.float64)
    w_a = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    w_b = torch.randn(D_IN, D, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x_a, x_b, w_a, w_b)]


def off_sde(**kw):
    """SDELoss reduced to its instance term: λ = 0, no enhancement, progress fixed."""
    loss = SDELoss(lambda_start=0.0, lambda_end=0.0, eps_strong=0.0, gamma_weak=0.0, gamma_noise=0.0, **kw)
    loss.set_progress(0.5)
    return loss


def losses(mod, local_loss: bool, with_grad: bool, rank: int = 0, world: int = 1):
    """(name, ours, open_clip's) called as open_clip calls its loss: loss(**model_out)."""
    clip = dict(local_loss=local_loss, gather_with_grad=with_grad, rank=rank, world_size=world)
    sig = dict(rank=rank, world_size=world)
    pairs = [("sde", off_sde(**clip), mod.ClipLoss(**clip)), ("siglip", SigLipLoss(**sig), mod.SigLipLoss(**sig))]
    if with_grad:  # info_nce's gather is the gradient-carrying one
        def ours(image_features, text_features, logit_scale, output_dict=False, **_):
            loss = sdekernels.info_nce(image_features, text_features, logit_scale=logit_scale, gather=world > 1,
                                       local_loss=local_loss)
            return {"contrastive_loss": loss} if output_dict else loss
        pairs.append(("info_nce", ours, mod.ClipLoss(**clip)))
    return pairs


def run(fn, x_a, x_b, w_a, w_b, autocast=False):
    """(loss, d raw image features, d raw text features, dW_a, dW_b, d log-scale, d bias) of one call."""
    W_a, W_b = w_a.clone().requires_grad_(), w_b.clone().requires_grad_()
    log_scale = torch.tensor(2.3, dtype=x_a.dtype, requires_grad=True)
    bias = torch.tensor(-4.0, dtype=x_a.dtype, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        raw_a, raw_b = x_a @ W_a, x_b @ W_b
        raw_a.retain_grad()
        raw_b.retain_grad()
        out = {"image_features": Fn.normalize(raw_a, dim=-1), "text_features": Fn.normalize(raw_b, dim=-1),
               "logit_scale": log_scale.exp(), "logit_bias": bias}
        loss = fn(**out, output_dict=True)["contrastive_loss"]
    loss.backward()
    zero = torch.zeros_like(bias)
    return [loss.detach().double(), raw_a.grad, raw_b.grad, W_a.grad, W_b.grad, log_scale.grad,
            zero if bias.grad is None else bias.grad]


def assert_same(got, want, atol, rtol, what):
    names = ["loss", "d image", "d text", "dW_a", "dW_b", "d log_scale", "d bias"]
    for name, g, w in zip(names, got, want):
        torch.testing.assert_close(g.double(), w.double(), atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{what} {name}: {m}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_one_process_matches_open_clip(dtype, path):
    mod = open_clip_loss()
    tol = (1e-12, 1e-10) if dtype == torch.float64 else (2e-6, 1e-5)
    for local_loss in (False, True):
        for name, ours, theirs in losses(mod, local_loss, True):
            with on_path(path):
                got = run(ours, *_data(dtype))
            assert_same(got, run(theirs, *_data(dtype)), *tol, f"{name} local_loss={local_loss} {dtype} {path}")


def test_bf16_autocast_matches_open_clip():
    """Under bf16 autocast the features are bf16; our losses compute in fp32 and agree with
    open_clip's fp32 computation on the same features within bf16 rounding."""
    mod = open_clip_loss()
    for name, ours, theirs in losses(mod, False, True):
        got = run(ours, *_data(torch.float32), autocast=True)
        want = run(theirs, *_data(torch.float32), autocast=True)
        assert got[1].dtype == torch.bfloat16  # the features really were bf16
        assert_same(got, want, 3e-2, 3e-2, f"{name} bf16 autocast")


def _worker(rank, init, path):
    torch.set_num_threads(1)
    torch.manual_seed(1234 + rank)  # open_clip seeds every rank differently (random_seed(seed, rank))
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        mod = open_clip_loss()
        x_a, x_b, w_a, w_b = _data()
        part = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        # the full SDELoss without a generator (first, so that its seed is rank 0's first draw):
        # the same ξ on every rank although the ranks' seeds differ
        sde = SDELoss(10, world_size=WORLD, rank=rank, gather_with_grad=True)
        out = {"sde full": [sde(Fn.normalize(x_a[part] @ w_a, dim=-1), Fn.normalize(x_b[part] @ w_b, dim=-1),
                                torch.tensor(10.0, dtype=torch.float64), step=3).detach()]}
        for local_loss in (False, True):
            for with_grad in (False, True):
                for name, ours, theirs in losses(mod, local_loss, with_grad, rank, WORLD):
                    for who, fn in (("ours", ours), ("open_clip", theirs)):
                        res = run(fn, x_a[part], x_b[part], w_a, w_b)
                        average_over_ranks(res[3:], WORLD)  # DDP: parameter gradients averaged over the ranks
                        out[name, local_loss, with_grad, who] = res
        torch.save(out, os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_open_clip(tmp_path):
    """Per rank, ours and open_clip's give the same loss, local feature gradients and DDP-averaged
    parameter gradients, for local_loss and gather_with_grad both ways."""
    open_clip_loss()
    mp.spawn(_worker, args=(f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, out in enumerate(ranks):
        keys = [k for k in out if k[-1:] == ("ours",)]
        assert len(keys) == 10
        for key in keys:
            assert_same(out[key], out[(*key[:-1], "open_clip")], 1e-12, 1e-10, f"rank {r} {key[:-1]}")
    # without a generator and with every rank seeded differently, both ranks see the same global loss,
    # which is that of one process seeded as rank 0 on the whole batch
    torch.testing.assert_close(ranks[0]["sde full"], ranks[1]["sde full"], atol=0, rtol=0)
    torch.manual_seed(1234)
    x_a, x_b, w_a, w_b = _data()
    whole = SDELoss(10)(Fn.normalize(x_a @ w_a, dim=-1), Fn.normalize(x_b @ w_b, dim=-1),
                        torch.tensor(10.0, dtype=torch.float64), step=3)
    torch.testing.assert_close(ranks[0]["sde full"][0], whole.detach(), atol=1e-12, rtol=1e-10)


def test_readme_open_clip_swap_runs():
    """The README's open_clip swap, executed as written, on one process; the state it checkpoints
    resumes the curriculum in a fresh loss."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = re.search(r"<!-- open_clip swap -->\s*```python\n(.*?)```", text, re.S).group(1)
    x_a, x_b, w_a, w_b = _data(torch.float32)
    W_a = w_a.clone().requires_grad_()
    model_out = {"image_features": Fn.normalize(x_a @ W_a, dim=-1), "text_features": Fn.normalize(x_b @ w_b, dim=-1),
                 "logit_scale": torch.tensor(10.0, requires_grad=True), "logit_bias": torch.tensor(-3.0),
                 "logits": None}  # an extra model output, ignored
    scope = {"total_steps": 40, "rank": 0, "world_size": 1, "model_out": model_out}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert W_a.grad is not None and torch.isfinite(W_a.grad).all() and W_a.grad.abs().sum() > 0
    assert torch.isfinite(scope["siglip"](**{k: v.detach() if isinstance(v, torch.Tensor) else v
                                             for k, v in model_out.items()}))
    resumed = SDELoss(40)
    resumed.load_state_dict(scope["checkpoint"]["loss"])
    assert resumed.num_calls == 1 and scope["loss"].last_stats["t"] == 0.0
    with torch.no_grad():  # evaluation does not advance the counter
        resumed(**{k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in model_out.items()})
    resumed(**{k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in model_out.items()})
    assert resumed.last_stats["t"] == pytest.approx(1 / 40) and resumed.num_calls == 2


@pytest.fixture
def open_clip_train(monkeypatch):
    """open_clip and its train_one_epoch importable without torchvision: stub modules stand in for
    the torchvision names open_clip imports (its image transforms and FrozenBatchNorm2d, unused here);
    open_clip's modules, bound to the stubs, are dropped afterwards."""
    import importlib
    import importlib.machinery
    import sys
    import types

    require(importlib.util.find_spec("open_clip") is not None, "open-clip-torch")

    class Anything(type):
        def __getattr__(cls, attr):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return attr

    def stub_attr(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Anything(attr, (), {"__init__": lambda self, *a, **k: None})

    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
                     "torchvision.ops.misc"):
            module = types.ModuleType(name)
            module.__path__, module.__getattr__ = [], stub_attr
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            monkeypatch.setitem(sys.modules, name, module)
            if "." in name:
                parent, child = name.rsplit(".", 1)
                setattr(sys.modules[parent], child, module)
    import open_clip
    from open_clip_train.train import train_one_epoch

    yield open_clip, train_one_epoch
    for name in [n for n in sys.modules if n.split(".")[0] in ("open_clip", "open_clip_train")]:
        del sys.modules[name]


def _train_tiny_clip(open_clip, train_one_epoch, loss, accum_freq=1, steps=3):
    """`steps` optimizer steps of open_clip's own train_one_epoch on a tiny CLIP (one-layer ViT and
    text transformer), fixed data; returns the parameters afterwards."""
    import types

    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 16, "patch_size": 8, "width": 32, "layers": 1,
                                                     "head_width": 16},
                           text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
                           output_dict=True)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 64, (8, 8), generator=g))
               for _ in range(steps * accum_freq)]
    loader = type("Loader", (), {"num_batches": len(batches), "num_samples": 8 * len(batches),
                                 "__iter__": lambda self: iter(batches)})()
    data = {"train": types.SimpleNamespace(set_epoch=lambda epoch: None, dataloader=loader)}
    args = types.SimpleNamespace(device="cpu", precision="fp32", accum_freq=accum_freq, distill=False,
                                 skip_scheduler=True, grad_clip_norm=None, horovod=False, log_every_n_steps=1,
                                 batch_size=8, world_size=1, rank=0, local_rank=0, wandb=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # Adam would amplify rounding-level gradients
    train_one_epoch(model, data, loss, 0, optimizer, None, None, None, args)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("accum_freq", [1, 2])
def test_open_clip_train_one_epoch_with_sde_loss(open_clip_train, accum_freq):
    """SDELoss swapped into open_clip's training loop: reduced to its instance term it trains the
    tiny CLIP exactly as ClipLoss does; the full loss trains, and counts one step per call made
    with gradients (accum_freq calls per optimizer step)."""
    open_clip, train_one_epoch = open_clip_train
    mod = open_clip_loss()
    start = _train_tiny_clip(open_clip, train_one_epoch, mod.ClipLoss(), accum_freq, steps=0)
    clip = _train_tiny_clip(open_clip, train_one_epoch, mod.ClipLoss(), accum_freq)
    ours = _train_tiny_clip(open_clip, train_one_epoch, off_sde(), accum_freq)
    # float32: the two losses' gradients differ by rounding (~1e-7 relative), 3 SGD steps of lr 0.5;
    # a real difference in the loss moves parameters by ~1e-2
    torch.testing.assert_close(ours, clip, atol=2e-5, rtol=1e-4)
    full = SDELoss(3 * accum_freq)
    trained = _train_tiny_clip(open_clip, train_one_epoch, full, accum_freq)
    assert torch.isfinite(trained).all() and not torch.equal(trained, start)
    steps = 3 * accum_freq
    assert full.num_calls == steps and full.last_stats["t"] == pytest.approx((steps - 1) / steps)
