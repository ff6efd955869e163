"""Accuracy of svd_topk against torch.svd_lowrank where SPEC §1 sets the bar: fp32 input with a
spectral gap σ_k/σ_{k+1} = 1.1 and a flat tail (σ within 1e-4 relative, sin∠ of V within 1e-3).

    python benchmarks/svd_accuracy.py [--m 1024] [--n 768] [--k 16]
"""
import argparse

import torch

import sdekernels as sk


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--m", type=int, default=1024)
    p.add_argument("--n", type=int, default=768)
    p.add_argument("--k", type=int, default=16)
    a = p.parse_args()
    m, n, k = a.m, a.n, a.k
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]
    tail = torch.linspace(1.0, 0.9, n - k, dtype=torch.float64)
    s = torch.cat([torch.linspace(3.0, 1.1, k, dtype=torch.float64), tail])
    F = ((U * s) @ V.T).float()
    print(f"F {m}x{n} fp32, top {k}, gap sigma_k/sigma_k+1 = 1.1, flat tail; SPEC: 1e-4 and 1e-3")
    for name, fn in [(f"torch.svd_lowrank(q={k + 8})", lambda X: torch.svd_lowrank(X, q=k + 8)),
                     ("torch.svd_lowrank(q=40)", lambda X: torch.svd_lowrank(X, q=40)),
                     ("sdekernels.svd_topk", lambda X: sk.svd_topk(X, k))]:
        _, S, Vk = fn(F)
        S, Vk = S[:k].double(), Vk[:, :k].double()
        err = float(((S - s[:k]).abs() / s[:k]).max())
        sin = float(torch.linalg.matrix_norm(V[:, :k] - Vk @ (Vk.T @ V[:, :k]), ord=2))
        print(f"  {name:28} max sigma rel. error {err:.2e}   sin angle(V) {sin:.2e}")


if __name__ == "__main__":
    main()
