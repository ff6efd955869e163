"""A small CLIP-style model on Fashion-MNIST, trained with SDELoss or plain InfoNCE.

Images: a small CNN from scratch. Text: captions ("a photo of a {class}." and paraphrases)
embedded once by the frozen MiniLM-L6 encoder, then a trainable linear projection. Both sides
are L2-normalised (as in open_clip) before the loss, with a learnable logit scale.

Evaluation (before and after training): zero-shot retrieval accuracy (a test image is assigned
the class whose caption embedding, averaged over templates, is nearest) on the clean test set
and on corrupted copies (Gaussian noise, blur, low contrast), and the strong/weak/noise energy
fractions of ``spectral_partition`` of the image feature matrix of a test batch (as the loss sees
it, and centred: without the batch-mean direction).

    python -m sdekernels train sde --loss sde --steps 600 --out runs/sde
"""
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

from .. import data
from . import common

EMBED_DIM = 384  # MiniLM-L6


class ImageEncoder(nn.Module):
    """28×28 grey → dim: three conv blocks (BatchNorm, ReLU, 2×2 pooling after the first two) and a linear head."""

    def __init__(self, dim: int = 128, width: int = 32, in_channels: int = 1):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(in_channels, width), nn.MaxPool2d(2), *block(width, 2 * width),
                                      nn.MaxPool2d(2), *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.head = nn.Linear(4 * width, dim)

    def forward(self, x):
        return self.head(self.features(x))


class ClipModel(nn.Module):
    def __init__(self, dim: int = 128, width: int = 32):
        super().__init__()
        self.config = {"dim": dim, "width": width}
        self.image = ImageEncoder(dim, width)
        self.text_proj = nn.Linear(EMBED_DIM, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, x):
        return Fn.normalize(self.image(x), dim=-1)

    def encode_text(self, e):
        return Fn.normalize(self.text_proj(e), dim=-1)

    def scale(self):
        return self.logit_scale.exp().clamp(max=100.0)

    def forward(self, x, e):
        """(image features, text features, logit scale): one training step's model outputs."""
        return self.encode_image(x), self.encode_text(e), self.scale()


def caption_batch(idx: np.ndarray, labels: torch.Tensor, n_templates: int, rng: np.random.Generator):
    """Captions for the images ``idx``: distinct templates for the images of one class.

    Repeated captions would make rows of the text-feature matrix coincide, i.e. exactly
    repeated (zero) singular values, where the SVD gradient of the reference is undefined. A
    class with more than ``n_templates`` images in the batch keeps only its first ones.
    Returns (image indices, caption indices into ``data.captions()``).
    """
    y = labels[idx].numpy()
    keep, caps = [], np.empty(len(idx), dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)[:n_templates]
        caps[where] = c * n_templates + rng.permutation(n_templates)[:len(where)]
        keep.extend(where.tolist())
    keep = np.sort(np.asarray(keep, dtype=np.int64))
    return idx[keep], caps[keep]


def class_embeddings(model: ClipModel, cap_emb: torch.Tensor, n_templates: int) -> torch.Tensor:
    """[n_classes, dim]: the normalised mean over templates of each class's caption features."""
    t = model.encode_text(cap_emb)
    return Fn.normalize(t.view(-1, n_templates, t.shape[-1]).mean(1), dim=-1)


def corrupted_sets(x: torch.Tensor, seed: int) -> dict:
    """The clean test images and three corrupted copies (in the normalised pixel space)."""
    g = torch.Generator().manual_seed(seed + 7919)
    return {"clean": x,
            "noise": data.gaussian_noise(x, 0.3 / data.FASHION_STD, g),  # σ = 0.3 of the pixel range
            "blur": data.gaussian_blur(x, 1.0),
            "contrast": data.contrast(x, 0.3)}


@torch.no_grad()
def image_features(model, x, device, batch=1000):
    return torch.cat([model.encode_image(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def spectral_energy(ops, F: torch.Tensor, center: bool = False) -> dict:
    """Strong/weak/noise energy fractions and counts of spectral_partition of a feature matrix [m, n]
    (of F − mean(F) with center=True)."""
    F = F.double()
    S = ops.singular_values(F - F.mean(0) if center else F)
    part = ops.spectral_partition(S, F.shape[0], F.shape[1], center=center)
    e = [float(v) for v in part.energy]
    return {"energy_strong": e[0], "energy_weak": e[1], "energy_noise": e[2],
            "n_strong": int(part.n_strong), "n_weak": int(part.n_weak)}


@torch.no_grad()
def evaluate(model, ops, test_x, test_y, cap_emb, n_templates, device, seed, partition_batch=256) -> dict:
    was = model.training
    model.eval()
    classes = class_embeddings(model, cap_emb.to(device), n_templates).cpu()
    out = {}
    for name, x in corrupted_sets(test_x, seed).items():
        pred = (image_features(model, x, device) @ classes.T).argmax(-1)
        out[f"acc_{name}"] = float((pred == test_y).double().mean())
    F = image_features(model, test_x[:partition_batch], device)
    out.update(spectral_energy(ops, F))
    # the same without the batch-mean direction, which holds almost all the energy of normalised features
    out.update({f"centered_{k}": v for k, v in spectral_energy(ops, F, center=True).items()})
    model.train(was)
    return out


@common.main_entry
def main(argv=None) -> int:
    p = common.parser("sde", __doc__.split("\n")[0], steps=600, batch_size=256, lr=2e-3)
    p.add_argument("--loss", choices=("sde", "infonce"), default="sde")
    p.add_argument("--dim", type=common.POSITIVE, default=128)
    p.add_argument("--width", type=common.POSITIVE, default=32)
    g = p.add_argument_group("SDELoss variant (ablations)")
    g.add_argument("--center", action="store_true", help="partition, enhancement and spectral terms on F − mean(F)")
    g.add_argument("--mode", choices=("full", "augment"), default="full", help="enhancement mode (SPEC §4)")
    g.add_argument("--no-enhance", action="store_true", help="no enhancement: δ = 0, F' = F")
    g.add_argument("--spectral-terms", default="hellinger,subspace",
                   help="comma-separated terms of L_spec: hellinger, subspace (empty: none)")
    unit = common.float_range(0.0, 1.0)
    g.add_argument("--lambda-start", type=unit, default=0.5, help="λ(0) of the curriculum (SPEC §3)")
    g.add_argument("--lambda-end", type=unit, default=0.05, help="λ(1); equal to --lambda-start for a constant λ")
    p.add_argument("--templates", type=common.int_range(1, len(data.TEMPLATES)), default=len(data.TEMPLATES),
                   help=f"use the first N of the {len(data.TEMPLATES)} caption templates "
                        "(a class keeps at most N images per batch)")
    args = p.parse_args(argv)
    if not data.have_fashion_mnist():
        p.error(f"Fashion-MNIST not found in {data.FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    common.check_limits(p, args, data.fashion_size("train"), data.fashion_size("test"))
    rank = 4 * args.width + 1  # the image features are an affine map of 4·width pooled channels
    if args.loss == "sde" and min(args.batch_size, args.dim) > rank:
        why = (f"--dim {args.dim} and --batch-size {args.batch_size} exceed 4·--width + 1 = {rank}: the image features "
               "have repeated zero singular values, where the SVD gradient is undefined")
        if args.backend == "reference":
            p.error(f"{why} (the reference gives NaN); use --dim <= {rank}")
        warnings.warn(f"{why}; the fused backend's stabilised gradient is used (no reference run can follow it)",
                      stacklevel=2)
    device, dtype = common.device_of(args), common.dtype_of(args)
    group = common.join(args, device)
    common.seed_everything(args.seed)
    ops = common.backend(args.backend, needed=("SDELoss", "info_nce", "singular_values", "spectral_partition"))

    train_x, train_y = data.fashion_mnist("train", args.limit, dtype)
    test_x, test_y = data.fashion_mnist("test", args.test_limit, dtype)
    templates = data.TEMPLATES[:args.templates]
    caps = data.captions(templates=templates)
    T = len(templates)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    with group.main_first():  # frozen text encoder: embedded once
        cap_emb = data.embed_texts(caps, run_dir / "captions.pt").to(dtype)

    model = ClipModel(args.dim, args.width).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = common.warmup_cosine(opt, args.steps, warmup=50)
    # SDELoss's random enhancement directions, drawn on the features' device
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    terms = tuple(t for t in args.spectral_terms.split(",") if t)
    if not set(terms) <= {"hellinger", "subspace"}:
        p.error(f"--spectral-terms: expected hellinger and/or subspace, got {args.spectral_terms!r}")
    variant = dict(center=args.center, mode=args.mode, spectral_terms=terms, lambda_start=args.lambda_start,
                   lambda_end=args.lambda_end)
    if args.no_enhance:
        variant.update(eps_strong=0.0, gamma_weak=0.0, gamma_noise=0.0)
    sde_loss = ops.SDELoss(args.steps, generator=gen, **variant) if args.loss == "sde" else None
    run = common.Run(args, {"model": model, "opt": opt, "sched": sched}, {"sde": gen}, group)
    if run.restore() == 0 and group.main:
        run.extra["before"] = evaluate(model, ops, test_x, test_y, cap_emb, T, device, args.seed)
    cap_dev, train_n = cap_emb.to(device), len(train_x)
    net = group.ddp(model)

    def step_fn(step):
        # the global batch (as one process), this rank's shard of it; the loss is the global batch's on every rank
        idx, cap_idx = caption_batch(common.epoch_batch(args.seed, step, args.batch_size, train_n), train_y,
                                     T, np.random.default_rng([args.seed, 1, step]))
        part = group.shard(len(idx))
        x = train_x[idx[part]].to(device)
        cap = cap_dev[torch.from_numpy(cap_idx[part]).to(device)]
        img, txt, scale = net(x, cap)
        img, txt = group.gather(img), group.gather(txt)
        if sde_loss is not None:
            loss = sde_loss(img, txt, scale, step=step)
        else:
            loss = ops.info_nce(img, txt, logit_scale=scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        m = {"loss": float(loss.detach()), "logit_scale": float(scale.detach()), "lr": sched.get_last_lr()[0]}
        if sde_loss is not None:
            s = sde_loss.last_stats
            m.update({k: s[k] for k in ("loss_inst", "loss_spec", "lam", "energy_strong_a", "energy_noise_a")})
        return m

    t0 = time.perf_counter()
    if not run.loop(step_fn) or not group.main:
        return 0
    train_seconds = time.perf_counter() - t0
    after = evaluate(model, ops, test_x, test_y, cap_emb, T, device, args.seed)
    torch.save({"config": model.config, "model": model.state_dict(), "templates": list(templates),
                "classes": list(data.FASHION_CLASSES)}, run_dir / "model.pt")
    metrics = common.read_metrics(run_dir)
    summary = {"driver": "sde", "loss": args.loss, "backend": args.backend, "dtype": args.dtype,
               "fallbacks": ops.fallbacks,
               "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed, "device": str(device),
               "variant": {**variant, "spectral_terms": list(terms)} if sde_loss is not None else None,
               "train_samples": train_n, "test_samples": len(test_x), "processes": group.size,
               "final_loss": metrics[-1]["loss"], "before": run.extra["before"], "after": after,
               "train_seconds_this_process": train_seconds}
    common.write_json(run_dir / "summary.json", summary)
    common.plot_curves(metrics, ["loss", "loss_inst", "loss_spec", "energy_strong_a", "energy_noise_a", "logit_scale"],
                       run_dir / "curves.png", f"train sde --loss {args.loss}")
    acc = [k for k in after if k.startswith("acc_")]
    common.plot_bars({"before": {k[4:]: run.extra["before"][k] for k in acc}, "after": {k[4:]: after[k] for k in acc}},
                     run_dir / "accuracy.png", f"zero-shot accuracy ({args.loss})", "accuracy")
    en = ("energy_strong", "energy_weak", "energy_noise")
    common.plot_bars({"before": {k[7:]: run.extra["before"][k] for k in en}, "after": {k[7:]: after[k] for k in en}},
                     run_dir / "energy.png", f"image-feature energy fractions ({args.loss})", "fraction of Σσ²")
    print(f"zero-shot accuracy clean {after['acc_clean']:.4f} noise {after['acc_noise']:.4f} "
          f"blur {after['acc_blur']:.4f} "
          f"contrast {after['acc_contrast']:.4f}; energy strong/weak/noise {after['energy_strong']:.3f}/"
          f"{after['energy_weak']:.3f}/{after['energy_noise']:.3f} (before {run.extra['before']['energy_strong']:.3f}/"
          f"{run.extra['before']['energy_weak']:.3f}/{run.extra['before']['energy_noise']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
