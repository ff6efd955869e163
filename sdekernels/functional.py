"""Functional API, in the style of torch.nn.functional."""
from .ops.distances import hellinger, subspace_distance

__all__ = ["hellinger", "subspace_distance"]
