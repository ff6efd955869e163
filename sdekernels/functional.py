"""Functional API, in the style of torch.nn.functional."""
from .ops.contrastive import gather_batch, info_nce, local_info_nce, rank_offset, siglip_loss
from .ops.distances import hellinger, subspace_distance
from .ops.fourier import amplitude_mix, fourier_merge, fourier_split, sample_mix_lam
from .ops.spectrum import block_dct_lowpass, dog, esm_loss, radial_psd
from .ops.enhance import enhance_decomposed, spectral_enhance
from .ops.svd import Decomposition, SpectralPartition, decompose, singular_values, spectral_partition, svd_topk

__all__ = ["hellinger", "subspace_distance", "fourier_split", "fourier_merge", "amplitude_mix", "sample_mix_lam",
           "info_nce", "siglip_loss", "radial_psd", "esm_loss", "block_dct_lowpass", "dog", "svd_topk",
           "singular_values", "spectral_partition", "spectral_enhance", "decompose", "enhance_decomposed",
           "Decomposition", "SpectralPartition", "gather_batch", "rank_offset", "local_info_nce"]
