"""CPU timing of fourier_split against the torch compositions it replaces (SPEC §8).

Medians of interleaved runs in one process: fft2 + abs + angle (the plain composition), rfft2 alone (a
lower bound of any FFT-based path) and sdekernels.fourier_split, forward only, on x [64, 3, 224, 224]
float32 by default. Prints the times and the ratio reference / ours (target: >= 1.5).

    python benchmarks/fourier.py [--shape 64 3 224 224] [--runs 7] [--threads N] [--dtype float32]
"""
import argparse

import torch

import sdekernels
from sdekernels import _ext
from sdekernels.bench import interleaved_ms


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[64, 3, 224, 224])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    x = torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    work = x.float() if dtype == torch.bfloat16 else x

    def composition():
        X = torch.fft.fft2(work)
        return X.abs().to(dtype), X.angle().to(dtype)

    impls = {
        "fft2 + abs + angle": composition,
        "rfft2 only": lambda: torch.fft.rfft2(work),
        "sdekernels.fourier_split": lambda: sdekernels.fourier_split(x),
        "sdekernels.fourier_split(centered, log)":
            lambda: sdekernels.fourier_split(x, centered=True, log_amplitude=True),
    }
    print(f"shape {tuple(x.shape)} {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"extension: {_ext.status()}")
    A, P = sdekernels.fourier_split(x)
    A0, P0 = composition()
    print(f"max |A − A_ref| = {(A.float() - A0.float()).abs().max():.3g}, "
          f"max |P − P_ref| (mod 2π) = "
          f"{torch.remainder(P.float() - P0.float() + torch.pi, 2 * torch.pi).sub(torch.pi).abs().max():.3g}")
    times = interleaved_ms(impls, args.runs)  # one warm-up each (first-call allocations, extension load)
    for name, ms in times.items():
        print(f"  {name:42s} {ms:9.1f} ms")
    ref, ours = times["fft2 + abs + angle"], times["sdekernels.fourier_split"]
    print(f"speed-up fourier_split vs fft2 + abs + angle: {ref / ours:.2f}x "
          f"(reference {ref:.1f} ms, ours {ours:.1f} ms)")


if __name__ == "__main__":
    main()
