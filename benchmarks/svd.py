"""CPU speed of the decomposition ops against their baselines, measured in one process.

Targets (SPEC §1, §4 issue): svd_topk(k=32) on 1024×4096 at least 5× faster than
torch.linalg.svd; spectral_enhance forward+backward at least 3× faster than the reference.
Run: python benchmarks/svd.py [--threads N] [--reps R]
"""
import argparse

import torch

import sdekernels
from sdekernels import reference as ref
from sdekernels.bench import fwd_bwd, interleaved_ms


def _median_pair(fa, fb, reps):
    """Interleaved timings (median ms) of two callables, after one warm-up each."""
    ms = interleaved_ms({"a": fa, "b": fb}, reps)
    return ms["a"], ms["b"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.reps} (interleaved)")
    rows = []

    F = torch.randn(1024, 4096, generator=g)
    ours, base = _median_pair(lambda: sdekernels.svd_topk(F, 32), lambda: torch.linalg.svd(F, full_matrices=False),
                              a.reps)
    rows.append(("svd_topk k=32 1024x4096 vs torch.linalg.svd", ours, base, 5.0))
    ours, base = _median_pair(lambda: sdekernels.svd_topk(F, 32), lambda: torch.svd_lowrank(F, q=40, niter=4), a.reps)
    rows.append(("svd_topk k=32 1024x4096 vs torch.svd_lowrank(q=40)", ours, base, None))
    Fb = torch.randn(64, 256, 256, generator=g)
    ours, base = _median_pair(lambda: sdekernels.svd_topk(Fb, 16), lambda: torch.linalg.svd(Fb, full_matrices=False),
                              a.reps)
    rows.append(("svd_topk k=16 64x256x256 vs torch.linalg.svd", ours, base, None))
    ours, base = _median_pair(lambda: sdekernels.singular_values(F), lambda: torch.linalg.svdvals(F), a.reps)
    rows.append(("singular_values 1024x4096 vs torch.linalg.svdvals", ours, base, None))

    for B, D in ((1024, 768), (1024, 512), (4096, 1024)):
        # Features: a decaying signal spectrum over Gaussian noise, as SDE sees them.
        s = 8.0 * 0.8 ** torch.arange(24.0)
        Fe = torch.randn(B, D, generator=g) + (torch.linalg.qr(torch.randn(B, 24, generator=g))[0] * s * B ** 0.5) @ \
            torch.linalg.qr(torch.randn(D, 24, generator=g))[0].T
        W = torch.randn(B, D, generator=g)
        ours, base = _median_pair(fwd_bwd(lambda X: sdekernels.spectral_enhance(X, 0.5), Fe, weight=W),
                                  fwd_bwd(lambda X: ref.spectral_enhance(X, 0.5), Fe, weight=W), a.reps)
        target = 3.0 if (B, D) == (1024, 768) else None
        rows.append((f"spectral_enhance fwd+bwd {B}x{D} vs reference", ours, base, target))

    print(f"{'case':58s} {'ours ms':>9s} {'base ms':>9s} {'ratio':>7s}  target")
    for name, o, b, target in rows:
        ok = "" if target is None else (f">= {target:g}x " + ("met" if b / o >= target else "MISSED"))
        print(f"{name:58s} {o:9.1f} {b:9.1f} {b / o:6.1f}x  {ok}")


if __name__ == "__main__":
    main()
