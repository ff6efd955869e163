"""A small convolutional autoencoder (64×64 RGB → latent 4×16×16) on crops of scikit-image's photos,
with or without spectrum matching (esm_loss) and DSM masking (block_dct_lowpass).

- plain: L = MSE(dec(enc(x)), x)
- --esm-weight w: + w · esm_loss(z, x, delta=--esm-delta) (the latent's radial spectrum matched to
  the image's weighted by f^delta: the flattened target at this driver's default delta = 1, the
  image's own at 0, esm_loss's default); --esm-delta, --esm-variant and --esm-keep-dc set
  esm_loss's delta, variant and keep_dc in every call (the training loss, the logged loss_esm and
  the evaluation's esm_test)
- --dsm: k drawn per step from {0, 8, 10, 12}; the decoder reconstructs block_dct_lowpass(x, k)
  from block_dct_lowpass(z, k) (k = 0 is the identity)
Training crops come from the left 3/4 of every photo, test crops from the right 1/4.
Evaluation: reconstruction PSNR, radial spectra of latent and image (plot), esm_loss on test
crops, and a diffusability probe: a tiny denoiser trained for --probe-steps steps on the
latents (scaled to unit variance) at noise levels 0.1, 0.25, 0.5, 1.0; its held-out MSE per
level (lower: the latent is easier to model by diffusion). --probe-widths trains one probe per
width on the same data and noise; the first width's results keep the plain keys (probe_mse_mean),
each further width's carry the suffix _w<width> (probe_mse_mean_w64).

    python -m sdekernels train esm --steps 600 --out runs/esm_plain
    python -m sdekernels train esm --steps 600 --esm-weight 0.1 --dsm --out runs/esm_dsm
"""
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

from .. import data
from . import common

DSM_K = (0, 8, 10, 12)
PROBE_SIGMAS = (0.1, 0.25, 0.5, 1.0)


class AutoEncoder(nn.Module):
    def __init__(self, width: int = 32, latent: int = 4):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),        # 32×32
            nn.Conv2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),    # 16×16
            nn.Conv2d(2 * w, latent, 3, padding=1))
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, 2 * w, 3, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(2 * w, 2 * w, 4, stride=2, padding=1), nn.SiLU(),  # 32×32
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),      # 64×64
            nn.Conv2d(w, 3, 3, padding=1))

    def forward(self, x, lowpass=None):
        """(latent z, reconstruction from lowpass(z), or from z without one)."""
        z = self.encoder(x)
        return z, self.decoder(z if lowpass is None else lowpass(z))


class Denoiser(nn.Module):
    """The diffusability probe: predicts the clean latent from latent + σ·noise (σ given as an extra channel)."""

    def __init__(self, latent: int = 4, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(latent + 1, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, latent, 3, padding=1))

    def forward(self, z_noisy, sigma):
        s = sigma.view(-1, 1, 1, 1).expand(-1, 1, *z_noisy.shape[-2:])
        return self.net(torch.cat([z_noisy, s], dim=1))


def psnr(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1], measured on the [0, 1] range."""
    mse = ((rec.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def normalised_psd(ops, x: torch.Tensor, bins: int = 16) -> torch.Tensor:
    """Batch-mean radial power spectrum, normalised to sum 1 (so image and latent are comparable)."""
    s = ops.radial_psd(x, bins=bins).mean(0).double()
    return s / s.sum().clamp_min(1e-30)


@torch.no_grad()
def encode_all(model, x, device, batch=256):
    return torch.cat([model.encoder(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)])


def diffusability(latents_train, latents_test, steps: int, seed: int, device, batch: int = 64,
                  width: int = 32) -> dict:
    """Train the tiny denoiser on the latents (unit variance) and return its held-out MSE per noise level.
    The data and noise depend on the seed alone; the initialisation also on the width (seed + 54321 at 32)."""
    scale = latents_train.std().clamp_min(1e-8)
    zt, zv = latents_train / scale, latents_test / scale
    g = torch.Generator().manual_seed(seed + 12345)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed + 54289 + width)  # the probe's initialisation, independent of the training run's RNG
    net = Denoiser(zt.shape[1], width).to(device, zt.dtype)
    torch.set_rng_state(torch_state)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sig = torch.tensor(PROBE_SIGMAS, dtype=zt.dtype)
    for _ in range(steps):
        idx = torch.randint(len(zt), (batch,), generator=g)
        s = sig[torch.randint(len(sig), (batch,), generator=g)]
        z = zt[idx]
        noisy = z + s.view(-1, 1, 1, 1) * torch.randn(z.shape, generator=g, dtype=z.dtype)
        loss = Fn.mse_loss(net(noisy.to(device), s.to(device)), z.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = {}
    with torch.no_grad():
        for sv in PROBE_SIGMAS:
            s = torch.full((len(zv),), sv, dtype=zv.dtype)
            noisy = zv + sv * torch.randn(zv.shape, generator=g, dtype=zv.dtype)
            out[f"probe_mse_{sv:g}"] = float(Fn.mse_loss(net(noisy.to(device), s.to(device)).cpu(), zv))
    out["probe_mse_mean"] = float(np.mean([out[f"probe_mse_{s:g}"] for s in PROBE_SIGMAS]))
    return out


@torch.no_grad()
def evaluate(model, ops, test_x, probe_train_x, probe_steps, seed, device, esm_kw, probe_widths) -> dict:
    was = model.training
    model.eval()
    z = encode_all(model, test_x, device)
    rec = torch.cat([model.decoder(z[i:i + 256].to(device)).cpu() for i in range(0, len(z), 256)])
    out = {"psnr": float(psnr(rec, test_x).mean()), "esm_test": float(ops.esm_loss(z, test_x, **esm_kw)),
           "latent_std": float(z.std()),
           "psd_image": normalised_psd(ops, test_x).tolist(), "psd_latent": normalised_psd(ops, z).tolist()}
    half = len(out["psd_latent"]) // 2
    out["latent_high_freq_fraction"] = float(sum(out["psd_latent"][half:]))
    out["image_high_freq_fraction"] = float(sum(out["psd_image"][half:]))
    latents = encode_all(model, probe_train_x, device)
    for i, width in enumerate(probe_widths):
        with torch.enable_grad():
            probe = diffusability(latents, z, probe_steps, seed, device, width=width)
        out.update({k + (f"_w{width}" if i else ""): v for k, v in probe.items()})
    model.train(was)
    return out


@common.main_entry
def main(argv=None) -> int:
    p = common.parser("esm", __doc__.split("\n")[0], steps=600, batch_size=32, lr=1e-3)
    p.add_argument("--esm-weight", type=common.float_range(0.0), default=0.0, help="weight of esm_loss (0: off)")
    p.add_argument("--esm-delta", type=common.float_range(-math.inf), default=1.0,
                   help="esm_loss's delta: the target spectrum is weighted by f^delta (1: the flattened target "
                        "of this driver's recorded runs; esm_loss's own default is 0)")
    p.add_argument("--esm-variant", choices=("library", "official"), default="library", help="esm_loss's variant")
    p.add_argument("--esm-keep-dc", action="store_true",
                   help="esm_loss's keep_dc: spectra of the uncentred latent and image, with the DC entry")
    p.add_argument("--dsm", action="store_true", help="DSM masking with k drawn from {0, 8, 10, 12} per step")
    p.add_argument("--width", type=common.POSITIVE, default=32)
    p.add_argument("--probe-steps", type=common.int_range(0), default=300)
    p.add_argument("--probe-samples", type=common.POSITIVE, default=512, help="latents the probe trains on")
    p.add_argument("--probe-widths", type=common.POSITIVE, nargs="+", default=[32], metavar="W",
                   help="one probe per width (the first's results unsuffixed, the others' as KEY_w<width>)")
    args = p.parse_args(argv)
    if len(set(args.probe_widths)) < len(args.probe_widths):
        p.error(f"argument --probe-widths: the widths must differ, got {args.probe_widths}")
    esm_kw = {"delta": args.esm_delta, "variant": args.esm_variant, "keep_dc": args.esm_keep_dc}
    device, dtype = common.device_of(args), common.dtype_of(args)
    group = common.join(args, device)
    common.check_shards(p, args, group)
    common.seed_everything(args.seed)
    ops = common.backend(args.backend, needed=("esm_loss", "radial_psd", "block_dct_lowpass"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variant = "+".join([n for n, on in (("esm", args.esm_weight > 0), ("dsm", args.dsm)) if on]) or "plain"

    train_imgs, test_imgs = data.split_images(data.natural_images())
    n_test = args.test_limit or 256
    test_x = data.random_crops(test_imgs, n_test, 64, np.random.default_rng([args.seed, 5])).to(dtype)
    probe_x = data.random_crops(train_imgs, args.limit or args.probe_samples, 64,
                                np.random.default_rng([args.seed, 6])).to(dtype)

    model = AutoEncoder(args.width).to(device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = common.warmup_cosine(opt, args.steps, warmup=20)
    run = common.Run(args, {"model": model, "opt": opt, "sched": sched}, group=group)

    def evaluate_now():
        return evaluate(model, ops, test_x, probe_x, args.probe_steps, args.seed, device, esm_kw, args.probe_widths)

    if run.restore() == 0 and group.main:
        run.extra["before"] = evaluate_now()
    net = group.ddp(model)

    def step_fn(step):
        rng = np.random.default_rng([args.seed, 4, step])
        x = data.random_crops(train_imgs, args.batch_size, 64, rng)[group.shard(args.batch_size)].to(device, dtype)
        k = int(rng.choice(DSM_K)) if args.dsm else 0
        z, rec = net(x, (lambda t: ops.block_dct_lowpass(t, k)) if k else None)
        target = ops.block_dct_lowpass(x, k) if k else x
        loss_rec = Fn.mse_loss(rec, target)
        if args.esm_weight > 0:
            loss_esm = ops.esm_loss(z, x, **esm_kw)
            loss = loss_rec + args.esm_weight * loss_esm
        else:
            with torch.no_grad():
                loss_esm = ops.esm_loss(z, x, **esm_kw)  # logged only
            loss = loss_rec
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        m = {"loss": loss, "loss_rec": loss_rec, "loss_esm": loss_esm, "psnr_train": psnr(rec.detach(), target).mean()}
        return {**group.mean({key: float(v.detach()) for key, v in m.items()}), "k": k}

    t0 = time.perf_counter()
    if not run.loop(step_fn) or not group.main:
        return 0
    train_seconds = time.perf_counter() - t0
    after = evaluate_now()
    metrics = common.read_metrics(out)
    summary = {"driver": "esm", "variant": variant, "esm_weight": args.esm_weight, "esm_delta": args.esm_delta,
               "esm_variant": args.esm_variant, "esm_keep_dc": args.esm_keep_dc, "dsm": args.dsm,
               "probe_widths": args.probe_widths,
               "backend": args.backend, "dtype": args.dtype, "fallbacks": ops.fallbacks, "steps": args.steps,
               "batch_size": args.batch_size,
               "seed": args.seed, "device": str(device), "processes": group.size,
               "test_crops": n_test, "final_loss": metrics[-1]["loss"],
               "before": run.extra["before"], "after": after, "train_seconds_this_process": train_seconds}
    common.write_json(out / "summary.json", summary)
    common.plot_curves(metrics, ["loss", "loss_rec", "loss_esm", "psnr_train"], out / "curves.png",
                       f"train esm ({variant})")
    plot_spectra({f"latent ({variant})": after["psd_latent"], "image": after["psd_image"]}, out / "spectra.png",
                 f"radial spectra, test crops ({variant})")
    print(f"{variant}: PSNR {after['psnr']:.2f} dB, esm_loss {after['esm_test']:.4f}, latent high-frequency fraction "
          f"{after['latent_high_freq_fraction']:.3f} (image {after['image_high_freq_fraction']:.3f}), probe MSE "
          f"{after['probe_mse_mean']:.4f}")
    return 0


def plot_spectra(curves: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, s in curves.items():
        ax.semilogy(range(1, len(s) + 1), s, marker="o", ms=3, lw=1.5 if name == "image" else 1, label=name,
                    color="k" if name == "image" else None)
    ax.set_xlabel("radial frequency bin")
    ax.set_ylabel("normalised power")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
