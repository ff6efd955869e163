"""CPU time of SDELoss forward + backward against the reference SDELoss and torch.compile of it (SPEC §7).

Features F_a, F_b [B, D] float32 with a few strong directions over noise (as trained features
have), t = 0.5. The three implementations are timed in one process by the bench's own loop
(sdekernels.bench.compare: first call apart, warm-up, rounds sized to --budget seconds each); the
medians and the ratios reference / ours and compiled reference / ours are printed. Target at
1024×512: ours >= 3× faster than the reference.

    python benchmarks/sde_loss.py [--shapes 1024x512 4096x1024] [--budget 3] [--threads N] [--no-compile]
"""
import argparse
import logging
import warnings

import torch

import sdekernels.reference as ref
from sdekernels.bench import compare, fwd_bwd
from sdekernels.nn import SDELoss


def features(B: int, D: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, 8, generator=g))[0].mT
    strength = torch.tensor([40.0, 30.0, 20.0, 12.0, 8.0, 6.0, 5.0, 4.0])
    F_a = (torch.randn(B, 8, generator=g) * strength) @ basis + torch.randn(B, D, generator=g)
    F_b = F_a + 0.5 * (torch.randn(B, 8, generator=g) * strength) @ basis + torch.randn(B, D, generator=g)
    return F_a, F_b


def step(loss_fn, F_a, F_b):
    return fwd_bwd(lambda a, b: loss_fn(a, b, torch.tensor(14.0), step=50), F_a, F_b)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["1024x512", "4096x1024"])
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed rounds per implementation")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process's CPU time instead of wall time "
                        "(steadier on a shared machine; use 1 thread)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline (~1 min to compile)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # the reference's graph breaks (.item(), lru_cache) are expected
    torch._logging.set_logs(dynamo=logging.ERROR)
    print(f"SDELoss forward+backward, float32, {torch.get_num_threads()} threads, "
          f"{'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}")
    for shape in args.shapes:
        B, D = (int(x) for x in shape.split("x"))
        F_a, F_b = features(B, D)
        fns = {"reference": step(ref.SDELoss(100), F_a, F_b)}
        if not args.no_compile:
            fns["compiled reference"] = step(torch.compile(ref.SDELoss(100), dynamic=False), F_a, F_b)
        fns["sdekernels"] = step(SDELoss(100), F_a, F_b)
        ms = {k: t["ms"] for k, t in compare(fns, cpu_time=args.cpu_time, budget_s=args.budget).items()}
        ours = ms["sdekernels"]
        print(f"{B}x{D}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items()))
        for k, v in ms.items():
            if k != "sdekernels":
                print(f"  {k} / sdekernels = {v / ours:.2f}x")


if __name__ == "__main__":
    main()
