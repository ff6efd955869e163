"""Batched GEMM of the spectral core (private): the products of the Gram and randomized solvers.

triton_bmm(a, b, out_dtype) multiplies batches of strided operands [R|1, M, K] @ [R|1, K, N] in a
Triton kernel (a transpose is a stride swap, a shared operand a zero batch stride; fp32
accumulation, fp64 for fp64), and mm_for(x) picks it on CUDA (or inside triton_on_cpu()) and ATen
(MKL) otherwise, so the solvers in ops/_solvers.py name one product for both devices.
"""
import torch
from torch import Tensor

from . import _triton as kt
from .._core import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._triton import mma

    @triton.jit(do_not_specialize=["M", "N", "K"])
    def _bmm_kernel(A, B, C, M, N, K, sa0, sa1, sa2, sb0, sb1, sb2, sc0, sc1, sc2,
                    DOT: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr):
        # C[b] = A[b] @ B[b] for strided operands (a transpose is a stride swap, a shared operand a
        # zero batch stride); operands are loaded as DOT, accumulated in fp32 (fp64 for fp64).
        b = tl.program_id(0).to(tl.int64)
        rm = tl.program_id(1) * BM + tl.arange(0, BM)
        rn = tl.program_id(2) * BN + tl.arange(0, BN)
        a_ptr = A + b * sa0 + rm[:, None] * sa1
        b_ptr = B + b * sb0 + rn[None, :] * sb2
        acc = tl.zeros([BM, BN], tl.float64 if DOT == tl.float64 else tl.float32)
        for k0 in range(0, K, BK):
            rk = k0 + tl.arange(0, BK)
            a = tl.load(a_ptr + rk[None, :] * sa2, mask=(rm[:, None] < M) & (rk[None, :] < K), other=0).to(DOT)
            x = tl.load(b_ptr + rk[:, None] * sb1, mask=(rk[:, None] < K) & (rn[None, :] < N), other=0).to(DOT)
            acc = mma(acc, a, x, PRECISION)
        tl.store(C + b * sc0 + rm[:, None] * sc1 + rn[None, :] * sc2, acc.to(C.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    def _bmm_host(A, B, C, *_, **__):
        """What _bmm_kernel computes, in ATen: its result where `python -m sdekernels aot` records a
        launch on real data instead of running it, so that the host code after it (the solvers'
        data-dependent paths) sees the numbers it would see on a GPU."""
        acc = torch.float64 if C.dtype == torch.float64 else torch.float32
        C.copy_(torch.matmul(A.to(acc), B.to(acc)))

    _bmm_kernel.host = _bmm_host


def _bstride(x: Tensor, i: int) -> int:
    return x.stride(i) if x.shape[i] != 1 else 0


def triton_bmm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """a [R|1, M, K] @ b [R|1, K, N] -> [R, M, N] in out_dtype (fp64 accumulation for fp64 output)."""
    R = max(a.shape[0], b.shape[0])
    M, K = a.shape[-2:]
    N = b.shape[-1]
    c = torch.empty((R, M, N), device=a.device, dtype=out_dtype)
    if c.numel() == 0:
        return c
    if K == 0:
        return c.zero_()
    dot = kt.operand(a.dtype, b.dtype, out=out_dtype)
    if dot == torch.float64:  # Triton 3.6 fails to compile a bf16/fp16 -> fp64 dot operand (MMAv2 lowering)
        a, b = (t.float() if t.dtype in kt.LOW else t for t in (a, b))
    BM, BN, BK, warps = kt.gemm_tiles(M, N, K, dot)
    grid = (R, triton.cdiv(M, BM), triton.cdiv(N, BN))
    _bmm_kernel[grid](a, b, c, M, N, K, _bstride(a, 0), a.stride(1), a.stride(2), _bstride(b, 0), b.stride(1),
                      b.stride(2), c.stride(0), c.stride(1), c.stride(2), DOT=kt.tl_dtype(dot),
                      PRECISION=kt.precision(dot), BM=BM, BN=BN, BK=BK, num_warps=warps)
    return c


def _aten_bmm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    a, b = a.to(out_dtype), b.to(out_dtype)
    if a.mT.is_contiguous() and not a.is_contiguous() and a.shape[-1] > b.shape[-1]:
        # a = Fᵀ, a transposed view of the large operand: (bᵀF)ᵀ keeps F row-major on the right,
        # measured 1.1–1.4× faster in MKL's sgemm (1 thread, F 1024×768–8192×1024, 16–136 columns);
        # the result is a column-major view, as LAPACK's QR takes it.
        return torch.matmul(b.mT, a.mT).mT
    return torch.matmul(a, b)


def mm_for(x: Tensor):
    return triton_bmm if use_triton(x) else _aten_bmm
