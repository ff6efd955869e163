"""radial_psd forward + backward at (256, 4, 32, 32), float32, on this machine's CPU: the
reference, torch.compile of the reference and sdekernels, timed in the same process
(medians of interleaved runs), with the speed-up ratios.

    python benchmarks/spectrum.py [--reps 15] [--shape 256 4 32 32] [--threads 2] [--cpu-time] [--no-compile]
"""
import argparse
import time

import torch

import sdekernels
from sdekernels import _ext
from sdekernels import reference as ref
from sdekernels.bench import fwd_bwd, interleaved_ms


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--shape", type=int, nargs=4, default=[256, 4, 32, 32])
    p.add_argument("--transform", default="dct", choices=["dct", "fft"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpu-time", action="store_true",
                   help="time by process CPU time instead of wall time "
                        "(robust on a shared machine; use with --threads 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.shape, generator=gen)
    g = torch.randn(a.shape[0], 16, generator=gen)
    impls = {"reference": lambda t: ref.radial_psd(t, transform=a.transform),
             "sdekernels": lambda t: sdekernels.radial_psd(t, transform=a.transform)}
    if not a.no_compile:
        impls["reference (torch.compile)"] = torch.compile(impls["reference"])
    print(f"radial_psd fwd+bwd {tuple(a.shape)} float32 transform={a.transform}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, extension: {_ext.status()}")
    clock = time.process_time if a.cpu_time else time.perf_counter
    print(f"  median of {a.reps} runs, {'process CPU' if a.cpu_time else 'wall'} time")
    times = interleaved_ms({name: fwd_bwd(fn, x, weight=g) for name, fn in impls.items()}, a.reps, clock=clock,
                           warmup=3)
    for name, ms in times.items():
        print(f"  {name:28s} {ms:9.3f} ms")
    ours = times["sdekernels"]
    for name, ms in times.items():
        if name != "sdekernels":
            print(f"  speed-up vs {name}: {ms / ours:.2f}x")


if __name__ == "__main__":
    main()
