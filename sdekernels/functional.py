"""Functional API, in the style of torch.nn.functional."""
from .ops.distances import hellinger, subspace_distance
from .ops.fourier import amplitude_mix, fourier_merge, fourier_split

__all__ = ["hellinger", "subspace_distance", "fourier_split", "fourier_merge", "amplitude_mix"]
