"""CPU time and peak memory of info_nce forward + backward against explicit B×B logits (SPEC §6).

The baseline is the reference (open_clip's formulation: s·ẑ_a ẑ_bᵀ, then F.cross_entropy both
ways). Peak memory is read from the profiler's raw allocation events (every CPU allocation and
free, in order; not the per-op totals, which count nested ops twice). Target at B = 16384:
sdekernels' peak <= 1/10 of the explicit logits'. Times are medians of interleaved runs.

    python benchmarks/info_nce.py [--B 4096 16384] [--d 256] [--runs 3] [--threads N]
"""
import argparse
import time

import torch

import sdekernels
import sdekernels.reference as ref
from sdekernels.bench import fwd_bwd, interleaved_ms, peak_memory


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--d", type=int, nargs="+", default=[256])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cpu-time", action="store_true",
                   help="time with the process's CPU time instead of wall time (steadier on a shared machine; use 1 thread)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"info_nce forward+backward, float32, {torch.get_num_threads()} threads, {'CPU' if args.cpu_time else 'wall'} time, torch {torch.__version__}")
    print(f"{'B':>6} {'d':>5} | {'explicit ms':>11} {'ours ms':>9} {'speed':>6} | {'explicit MB':>11} {'ours MB':>8} {'mem ratio':>9}")
    for B in args.B:
        for d in args.d:
            g = torch.Generator().manual_seed(0)
            z_a = torch.randn(B, d, generator=g)
            z_b = 0.5 * z_a + torch.randn(B, d, generator=g)
            fns = {"explicit": fwd_bwd(ref.info_nce, z_a, z_b), "ours": fwd_bwd(sdekernels.info_nce, z_a, z_b)}
            mem = {k: peak_memory(f, torch.device("cpu")) for k, f in fns.items()}  # also the warm-up run
            ms = interleaved_ms(fns, args.runs, clock=clock, warmup=0)
            print(f"{B:>6} {d:>5} | {ms['explicit']:>11.1f} {ms['ours']:>9.1f} {ms['explicit'] / ms['ours']:>5.2f}x | "
                  f"{mem['explicit'] / 2**20:>11.1f} {mem['ours'] / 2**20:>8.1f} {mem['explicit'] / mem['ours']:>8.1f}x")


if __name__ == "__main__":
    main()
