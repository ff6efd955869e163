"""Triton policy shared by every kernel: accumulation dtype, the tensor-core dot and its precision,
the multiprocessor count that sizes grids, and the interpreter workarounds.

Every dot runs on tensor cores through `mma`: bf16/fp16 operands as they are (fp32 accumulation),
fp32 operands at "tf32x3" (three TF32 products: fp32 accuracy; plain TF32 was measured outside the
fp32 tolerances, benchmarks/tf32_accuracy.py), fp64 operands on the fp64 MMA (DMMA).
"""
import contextlib

import torch

from .. import constants
from .._core import HAS_TRITON, INTERPRET, next_pow2

EMULATED_SMS = 132  # multiprocessors of the GPU that emulated CUDA launches size their grids for (an H100/H200)
LOW = (torch.bfloat16, torch.float16)

if HAS_TRITON:
    import triton
    import triton.language as tl

    # Under the interpreter `mma` reproduces the GPU's numerics: Triton's interpreter multiplies bf16
    # dot operands as raw integers (still so in Triton 3.9), so they are widened to fp32 (exact), and
    # it ignores input_precision, so the TF32 rounding of the operands is applied here. CPU tests of
    # the Triton path thus see the error the tensor cores will make.
    _INTERPRETER: tl.constexpr = tl.constexpr(INTERPRET)

    # The values of sdekernels/constants.py that kernels read, which the C++/CUDA twins read from
    # csrc/constants.h: Triton takes a module-level value only as a constexpr.
    HELLINGER_SUM_FLOOR = tl.constexpr(constants.HELLINGER_SUM_FLOOR)
    HELLINGER_PROB_FLOOR = tl.constexpr(constants.HELLINGER_PROB_FLOOR)
    HELLINGER_SCALE_LOG2 = tl.constexpr(constants.HELLINGER_SCALE_LOG2)
    PSD_FLOOR = tl.constexpr(constants.PSD_FLOOR)
    ATAN_TAN_PI_8 = tl.constexpr(constants.ATAN_TAN_PI_8)
    ATAN_C3 = tl.constexpr(constants.ATAN_C3)
    ATAN_C5 = tl.constexpr(constants.ATAN_C5)
    ATAN_C7 = tl.constexpr(constants.ATAN_C7)
    ATAN_C9 = tl.constexpr(constants.ATAN_C9)

    @triton.jit
    def _tf32(x, ROUND: tl.constexpr):
        """fp32 x cut to TF32's 10 mantissa bits: rounded (ties away, cvt.rna) or truncated, as an MMA
        reads an fp32 register."""
        u = x.to(tl.uint32, bitcast=True)
        if ROUND:
            u = u + 0x1000
        return (u & 0xFFFFE000).to(tl.float32, bitcast=True)

    @triton.jit
    def mma(acc, a, b, PRECISION: tl.constexpr):
        """acc + a @ b on tensor cores (a, b of one dtype; acc fp32, or fp64 for fp64 operands)."""
        if _INTERPRETER:
            if a.dtype == tl.bfloat16:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if PRECISION == "tf32":
                return tl.dot(_tf32(a, False), _tf32(b, False), acc, input_precision="ieee", out_dtype=acc.dtype)
            if PRECISION == "tf32x3":  # hi·hi + hi·lo + lo·hi with hi = rna(x), lo = x − hi
                ah, bh = _tf32(a, True), _tf32(b, True)
                lo = tl.dot(_tf32(a - ah, False), bh, input_precision="ieee")
                lo = tl.dot(ah, _tf32(b - bh, False), lo, input_precision="ieee")
                return tl.dot(ah, bh, acc + lo, input_precision="ieee", out_dtype=acc.dtype)
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)


def acc(dtype: torch.dtype):
    """Accumulation dtype (Triton) of a kernel whose work dtype is `dtype`: fp64 for fp64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def operand(*dtypes: torch.dtype, out: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype dot operands are loaded as: bf16/fp16 when every input is that dtype and the result
    is fp32, fp64 for an fp64 result, fp32 otherwise."""
    if out == torch.float64:
        return torch.float64
    if dtypes[0] in LOW and all(d == dtypes[0] for d in dtypes):
        return dtypes[0]
    return torch.float32


def tl_dtype(dtype: torch.dtype):
    return {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.bfloat16,
            torch.float16: tl.float16}[dtype]


_fp32_override = None


@contextlib.contextmanager
def fp32_dots(precision_: str):
    """Every fp32 dot launched inside runs at `precision_` ("tf32", "tf32x3" or "ieee"): how
    benchmarks/tf32_accuracy.py measures what each choice costs in accuracy."""
    global _fp32_override
    old, _fp32_override = _fp32_override, precision_
    try:
        yield
    finally:
        _fp32_override = old


def precision(dtype: torch.dtype) -> str:
    """input_precision of a dot of `dtype` operands: "tf32x3" for fp32 (one TF32 product fails the
    fp32 tolerances of every op with a dot: benchmarks/tf32_accuracy.py), "ieee" (their one mode)
    for bf16, fp16 and fp64."""
    if dtype != torch.float32:
        return "ieee"
    return _fp32_override or "tf32x3"


def tile(n: int, cap: int) -> int:
    """A power-of-two block for a dimension of n: at most cap, at least 16 (the smallest MMA tile)."""
    return max(16, min(cap, next_pow2(n)))


def gemm_tiles(M: int, N: int, K: int, dot: torch.dtype):
    """(BM, BN, BK, num_warps) of a GEMM on tensor cores: 64×64 output tiles, K steps of 16 (fp64),
    32 (fp32) or 64 (bf16/fp16) entries, on 4 warps (8 for fp64): no spills and 2+ programs per
    multiprocessor for sm_90 at every bench shape (benchmarks/NOTES.md, "Tile choices")."""
    bk = {torch.float64: 16, torch.float32: 32}.get(dot, 64)
    return tile(M, 64), tile(N, 64), tile(K, bk), 8 if dot == torch.float64 else 4


def sm_count(x: torch.Tensor) -> int:
    """Multiprocessors of x's GPU (EMULATED_SMS for a CPU tensor: an emulated CUDA launch)."""
    return torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else EMULATED_SMS


def _fix_interpreter_index():
    """Triton 3.6's interpreter turns a runtime loop bound into an int with int() of a one-element
    array, which NumPy 2 rejects ("only 0-dimensional arrays can be converted to Python scalars")
    in every `for i in range(0, n, BLOCK)`; compiled kernels are not affected. Convert by value."""
    from triton.runtime import interpreter as interp

    patch = getattr(interp, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_fixed", False):
        return

    def patched(tensor, scope, *args, **kwargs):
        patch(tensor, scope, *args, **kwargs)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._fixed = True
    interp._patch_lang_tensor = patched


if HAS_TRITON and INTERPRET:
    _fix_interpreter_index()
