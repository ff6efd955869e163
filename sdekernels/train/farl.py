"""Few-shot base-to-novel adaptation of a ``train sde`` model: FARL vs learnable prompts (CoOp-like) vs zero-shot.

The CLIP-style model of ``train sde`` (``--init DIR``) is frozen: its CNN image encoder, its
text projection of the MiniLM caption embeddings and its logit scale. Its text side has no
token sequence to prompt, so "deep prompts into the text encoder" are realised as prompt
tokens entering every layer of a small trainable 2-layer transformer head over the caption
feature (``sdekernels.nn.DeepPromptEncoder``; the same head in both backends, it holds no op):
    c_k = text_proj(mean MiniLM embedding of class k's captions)
    t_k = normalize(c_k + W_t · DeepPrompted([c_k], prompts)[0])       (W_t zero-initialised)
- coop: prompts = n_ctx learnable context tokens, shared by all classes and images.
- farl: prompts = [context tokens; fused tokens of FourierAttentiveTokens(image)] (image-specific
  deep prompts from its amplitude/phase spectrum), and, the asymmetric half of the injection,
  the image feature is conditioned on the unfused learnable tokens T:
    f = normalize(enc(x) + W_i · Attention(q = enc(x), k = v = T))      (W_i zero-initialised)
Both heads start as the identity, so step 0 is the zero-shot model. Ablation switches (defaults:
the model above): --branches amplitude|phase keeps one spectral branch of the tokens and --phase
angle embeds the phase map as P instead of (cos P, sin P) (FourierAttentiveTokens' options, farl
only); --no-image-injection drops the image-side half (f = enc(x)); --prompt-depth N gives the
prompts to the head's first N layers only (coop and farl). Training: 16 shots of each
of the 5 base classes, cross-entropy over the base classes, on flipped shots whose Fourier
amplitude is mixed with another shot's with probability --amp-mix (FACT's augmentation through
``amplitude_mix``: on raw pixels in [0, 1], lam ~ U(0, --amp-alpha), clipped to [0, 1], then
normalised). Evaluation: base test images among base classes, novel among novel classes, their
harmonic mean, and the same on a style-shifted test set (inverted images).

    python -m sdekernels train farl --init runs/sde --method farl --steps 200 --out runs/farl
"""
import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

from .. import data
from ..farl import DeepPromptEncoder
from ..functional import sample_mix_lam
from . import common
from .sde import ClipModel

BASE, NOVEL = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
HEAD_LAYERS = 2


class PromptHead(nn.Module):
    """Caption feature + deep prompts → small pre-norm transformer → residual on the caption feature.

    The prompts enter after the caption token at the first ``depth`` layers (``sdekernels.nn.DeepPromptEncoder``,
    by default all); the layers are trained here, unlike a frozen text encoder's.
    """

    def __init__(self, dim: int, heads: int = 4, layers: int = HEAD_LAYERS, depth: int = HEAD_LAYERS):
        super().__init__()
        self.encoder = DeepPromptEncoder(
            [nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                        norm_first=True) for _ in range(layers)],
            depth=depth, position=1, mode="prepend", freeze_encoder=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, c: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """c [N, d], prompts [N, P, d] → normalised text features [N, d]."""
        h = self.encoder(c.unsqueeze(1), prompts)[:, 0]
        return Fn.normalize(c + self.out(h), dim=-1)


class Adapter(nn.Module):
    """The frozen model with the prompt head (coop) or the head, the Fourier-attentive tokens and, with
    image_injection, the image-side attention to the tokens (farl); see the module's docstring."""

    def __init__(self, clip: ClipModel, class_emb: torch.Tensor, method: str, ops, n_ctx: int = 4,
                 n_tokens: int = 4, patch: int = 7, heads: int = 4, *, branches: str = "both",
                 phase: str = "cos_sin", image_injection: bool = True, prompt_depth: int = HEAD_LAYERS):
        super().__init__()
        self.clip, self.method = clip, method
        self.image_injection = method == "farl" and image_injection
        for p in clip.parameters():
            p.requires_grad_(False)
        self.register_buffer("class_emb", class_emb)  # [K, 384] mean MiniLM embedding per class
        d = clip.config["dim"]
        self.ctx = nn.Parameter(torch.randn(n_ctx, d) * 0.02)
        self.head = PromptHead(d, heads, depth=prompt_depth)
        if method == "farl":
            self.fat = ops.FourierAttentiveTokens(1, d, n_tokens, patch, heads, phase=phase, branches=branches)
        if self.image_injection:
            self.img_attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.img_out = nn.Linear(d, d)
            nn.init.zeros_(self.img_out.weight)
            nn.init.zeros_(self.img_out.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen, BatchNorm statistics included
        return self

    def forward(self, x: torch.Tensor, classes) -> torch.Tensor:
        return self.logits(x, classes)

    def logits(self, x: torch.Tensor, classes) -> torch.Tensor:
        """Scaled cosine logits [B, len(classes)] of images x [B, 1, 28, 28]."""
        B, K, d = x.shape[0], len(classes), self.ctx.shape[-1]
        f = self.clip.image(x)
        c = self.clip.text_proj(self.class_emb[list(classes)])  # [K, d]
        if self.method == "farl":
            tok = self.fat(x)
            T = tok.tokens
            if self.image_injection:
                f = f + self.img_out(self.img_attn(f.unsqueeze(1), T, T, need_weights=False)[0][:, 0])
            prompts = torch.cat([self.ctx.expand(B, -1, -1), tok.fused], dim=1)  # [B, P, d]
            P = prompts.shape[1]
            t = self.head(c.repeat(B, 1), prompts.unsqueeze(1).expand(B, K, P, d).reshape(B * K, P, d)).view(B, K, d)
            return self.clip.scale() * torch.einsum("bd,bkd->bk", Fn.normalize(f, dim=-1), t)
        t = self.head(c, self.ctx.expand(K, -1, -1))
        return self.clip.scale() * Fn.normalize(f, dim=-1) @ t.T


def few_shot_indices(labels: torch.Tensor, classes, shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    y = labels.numpy()
    return np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in classes])


def style_shift(x: torch.Tensor) -> torch.Tensor:
    """Inverted images (a photographic negative), in the normalised pixel space."""
    return data.invert(x, -data.FASHION_MEAN / data.FASHION_STD, (1 - data.FASHION_MEAN) / data.FASHION_STD)


def mix_pixels(ops, x: torch.Tensor, partner: torch.Tensor, lam) -> torch.Tensor:
    """FACT's amplitude mix of raw pixels in [0, 1], clipped back to [0, 1], then normalised.

    As FACT (data/data_utils.py, colorful_spectrum_mix): mixing normalised images instead would
    mix |DC| of mean-subtracted images, which folds the sign of each image's offset from the mean.
    """
    return data.normalize_fashion(ops.amplitude_mix(x, partner, lam).clamp(0, 1))


def augment(x: torch.Tensor, rng: np.random.Generator, ops, amp_mix: float, amp_alpha: float) -> torch.Tensor:
    """Raw shots [B, 1, H, W] in [0, 1] → horizontal flips and, with probability amp_mix, ``mix_pixels``
    with another shot, lam ~ U(0, amp_alpha) (``sample_mix_lam``) → normalised images."""
    B = len(x)
    flip = torch.from_numpy(rng.random(B) < 0.5)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if amp_mix == 0:
        return data.normalize_fashion(x)
    lam = sample_mix_lam(B, amp_alpha, generator=torch.Generator().manual_seed(int(rng.integers(2 ** 62))),
                         dtype=x.dtype)
    lam = lam * torch.from_numpy(rng.random(B) < amp_mix)
    return mix_pixels(ops, x, x[torch.from_numpy(rng.permutation(B))], lam)


def batch_loss(model: nn.Module, ops, shots: torch.Tensor, targets: torch.Tensor, step: int, args,
               group: common.Group = common.distributed.ONE):
    """Training batch ``step`` (a pure function of --seed and step), augmented as a whole, and this
    rank's shard of it (``group``): the shard's cross-entropy over the base classes → (loss, logits,
    targets). ``model``: the Adapter or its data-parallel wrapper."""
    idx = torch.from_numpy(common.epoch_batch(args.seed, step, args.batch_size, len(shots)))
    x = augment(shots[idx], np.random.default_rng([args.seed, 3, step]), ops, args.amp_mix, args.amp_alpha)
    part = group.shard(len(idx))
    x, y = x[part], targets[idx][part]
    device = next(model.parameters()).device
    logits = model(x.to(device), BASE)
    return Fn.cross_entropy(logits, y.to(device)), logits, y


@torch.no_grad()
def accuracy(model: Adapter, x, y, classes, device, batch=500) -> float:
    if len(x) == 0:
        return float("nan")
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[list(classes)] = torch.arange(len(classes))
    correct = 0
    for i in range(0, len(x), batch):
        pred = model.logits(x[i:i + batch].to(device), classes).argmax(-1).cpu()
        correct += int((pred == lookup[y[i:i + batch]]).sum())
    return correct / len(x)


def hm(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@torch.no_grad()
def evaluate(model: Adapter, test_x, test_y, device) -> dict:
    was = model.training
    model.eval()
    out = {}
    for name, x in (("", test_x), ("style_", style_shift(test_x))):
        for split, classes in (("base", BASE), ("novel", NOVEL)):
            sel = torch.isin(test_y, torch.tensor(classes))
            out[f"{name}{split}"] = accuracy(model, x[sel], test_y[sel], classes, device)
        out[f"{name}hm"] = hm(out[f"{name}base"], out[f"{name}novel"])
    model.train(was)
    return out


def load_clip(init: Path, device, dtype=torch.float32):
    """The trained model of `train sde` and the caption templates it was trained with."""
    path = Path(init) / "model.pt"
    ck = common.load_file(path, "model file")
    try:
        clip = ClipModel(**ck["config"])
        clip.load_state_dict(ck["model"])
        templates = tuple(str(t) for t in ck["templates"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise common.CheckpointError(f"{path}: not a model file of `train sde` ({common.first_line(exc)})") from None
    return clip.to(device, dtype).eval(), templates


def arguments():
    """The command line's parser (its defaults are the driver's)."""
    p = common.parser("farl", __doc__.split("\n")[0], steps=100, batch_size=32, lr=5e-4)
    p.add_argument("--init", required=True, help="output directory of `train sde` (reads DIR/model.pt)")
    p.add_argument("--method", choices=("farl", "coop"), default="farl")
    p.add_argument("--shots", type=common.POSITIVE, default=16)
    p.add_argument("--n-ctx", type=common.POSITIVE, default=4)
    p.add_argument("--n-tokens", type=common.POSITIVE, default=4)
    p.add_argument("--amp-mix", type=common.float_range(0.0, 1.0), default=0.5,
                   help="probability that a shot's Fourier amplitude is mixed with another shot's (FACT augmentation)")
    p.add_argument("--amp-alpha", type=common.float_range(0.0, 1.0), default=1.0,
                   help="FACT's alpha: the mixing weight is drawn from U(0, alpha)")
    p.add_argument("--branches", choices=("both", "amplitude", "phase"), default="both",
                   help="the spectral branches of the Fourier-attentive tokens (farl only)")
    p.add_argument("--phase", choices=("cos_sin", "angle"), default="cos_sin",
                   help="the phase map the tokens attend to: (cos P, sin P) or P itself (farl only)")
    p.add_argument("--image-injection", action=argparse.BooleanOptionalAction, default=True,
                   help="condition the image feature on the learnable tokens (farl only)")
    p.add_argument("--prompt-depth", type=common.POSITIVE, default=HEAD_LAYERS,
                   help=f"how many of the prompt head's {HEAD_LAYERS} layers receive the prompts")
    return p


FARL_ONLY = ("branches", "phase", "image_injection")


def check_options(p, args) -> None:
    """Parser errors for --prompt-depth beyond the head and for the farl-only switches set with coop."""
    if args.prompt_depth > HEAD_LAYERS:
        p.error(f"argument --prompt-depth: the prompt head has {HEAD_LAYERS} layers, got {args.prompt_depth}")
    if args.method != "farl":
        for name in FARL_ONLY:
            if getattr(args, name) != p.get_default(name):
                p.error(f"argument --{name.replace('_', '-')}: only for --method farl, got {getattr(args, name)!r}")


@common.main_entry
def main(argv=None) -> int:
    p = arguments()
    args = p.parse_args(argv)
    check_options(p, args)
    if not data.have_fashion_mnist():
        p.error(f"Fashion-MNIST not found in {data.FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    if not (Path(args.init) / "model.pt").exists():
        p.error(f"--init {args.init}: no model.pt (run `python -m sdekernels train sde --out {args.init}` first)")
    common.check_limits(p, args, data.fashion_size("train"), data.fashion_size("test"))
    device, dtype = common.device_of(args), common.dtype_of(args)
    group = common.join(args, device)
    common.check_shards(p, args, group)
    common.seed_everything(args.seed)
    ops = common.backend(args.backend, needed=("FourierAttentiveTokens", "amplitude_mix"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # the shots stay raw pixels in [0, 1]: augment() mixes amplitudes there and normalises after
    pool_x, pool_y = data.fashion_mnist("train", args.limit, dtype, normalize=False)
    fewest = min(int((pool_y == c).sum()) for c in BASE)
    if args.shots > fewest:
        p.error(f"argument --shots: a base class has only {fewest} samples within the data, got {args.shots}")
    shots = few_shot_indices(pool_y, BASE, args.shots, args.seed)
    train_x, train_y = pool_x[shots], pool_y[shots]
    test_x, test_y = data.fashion_mnist("test", args.test_limit, dtype)
    clip, templates = load_clip(args.init, device, dtype)
    with group.main_first():
        cap_emb = data.embed_texts(data.captions(templates=templates), out / "captions.pt")
    class_emb = cap_emb.view(len(data.FASHION_CLASSES), len(templates), -1).mean(1)

    model = Adapter(clip, class_emb.to(device, dtype), args.method, ops, args.n_ctx, args.n_tokens,
                    branches=args.branches, phase=args.phase, image_injection=args.image_injection,
                    prompt_depth=args.prompt_depth).to(device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = common.warmup_cosine(opt, args.steps)
    trainable = {k: v for k, v in model.state_dict().items() if not k.startswith("clip.")}

    class TrainableState:  # checkpoint only what trains (the frozen model is re-read from --init)
        def state_dict(self):
            return {k: v for k, v in model.state_dict().items() if k in trainable}

        def load_state_dict(self, sd):
            model.load_state_dict(sd, strict=False)

    run = common.Run(args, {"model": TrainableState(), "opt": opt, "sched": sched}, group=group,
                     fixed=("method", *FARL_ONLY, "prompt_depth"))
    model.train()
    if run.restore() == 0 and group.main:
        run.extra["zero_shot"] = evaluate(model, test_x, test_y, device)
    targets = torch.as_tensor([BASE.index(int(c)) for c in train_y])
    net = group.ddp(model)

    def step_fn(step):
        loss, logits, y = batch_loss(net, ops, train_x, targets, step, args, group)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = (logits.argmax(-1).cpu() == y).double().mean()
        return group.mean({"loss": float(loss.detach()), "train_acc": float(acc)})

    t0 = time.perf_counter()
    if not run.loop(step_fn) or not group.main:
        return 0
    train_seconds = time.perf_counter() - t0
    after = evaluate(model, test_x, test_y, device)
    metrics = common.read_metrics(out)
    summary = {"driver": "farl", "method": args.method, "backend": args.backend, "dtype": args.dtype,
               "amp_mix": args.amp_mix, "amp_alpha": args.amp_alpha, "lr": args.lr,
               **{name: getattr(args, name) if args.method == "farl" else None for name in FARL_ONLY},
               "prompt_depth": args.prompt_depth, "fallbacks": ops.fallbacks,
               "init": str(args.init), "steps": args.steps, "shots": args.shots, "seed": args.seed,
               "base_classes": [data.FASHION_CLASSES[c] for c in BASE],
               "novel_classes": [data.FASHION_CLASSES[c] for c in NOVEL],
               "trainable_parameters": sum(p.numel() for p in params), "test_samples": len(test_x),
               "processes": group.size,
               "final_loss": metrics[-1]["loss"], "zero_shot": run.extra["zero_shot"], "adapted": after,
               "train_seconds_this_process": train_seconds}
    common.write_json(out / "summary.json", summary)
    common.plot_curves(metrics, ["loss", "train_acc"], out / "curves.png", f"train farl --method {args.method}")
    keys = ("base", "novel", "hm", "style_base", "style_novel", "style_hm")
    common.plot_bars({"zero-shot": {k: run.extra["zero_shot"][k] for k in keys},
                      args.method: {k: after[k] for k in keys}}, out / "accuracy.png",
                     f"base-to-novel, {args.shots} shots ({args.method})", "accuracy")
    zs = run.extra["zero_shot"]
    print(f"{args.method}: base {after['base']:.4f} novel {after['novel']:.4f} HM {after['hm']:.4f}; style-shifted HM "
          f"{after['style_hm']:.4f} (zero-shot: base {zs['base']:.4f} novel {zs['novel']:.4f} HM {zs['hm']:.4f}, "
          f"style HM {zs['style_hm']:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
