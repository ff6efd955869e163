"""Pure-PyTorch reference of every sdekernels op (SPEC.md), the ground truth of the fused paths.

Plain math: full SVD, explicit B×B logits, explicit DCT matrices, torch.fft. Slow by design.
"""
from .contrastive import SDELoss, gather_batch, info_nce, local_info_nce, rank_offset, siglip_loss
from .distances import hellinger, subspace_distance
from .fourier import FourierAttentiveTokens, FourierTokens, amplitude_mix, fourier_merge, fourier_split
from .spectrum import block_dct_lowpass, dct_matrix, dog, esm_loss, radial_psd
from .svd import SpectralPartition, mp_median, singular_values, spectral_enhance, spectral_partition, svd_topk

__all__ = [
    "svd_topk",
    "singular_values",
    "spectral_partition",
    "SpectralPartition",
    "spectral_enhance",
    "mp_median",
    "hellinger",
    "subspace_distance",
    "info_nce",
    "siglip_loss",
    "local_info_nce",
    "rank_offset",
    "gather_batch",
    "SDELoss",
    "fourier_split",
    "fourier_merge",
    "amplitude_mix",
    "FourierAttentiveTokens",
    "FourierTokens",
    "radial_psd",
    "esm_loss",
    "block_dct_lowpass",
    "dog",
    "dct_matrix",
]
