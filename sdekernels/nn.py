"""Modules (in the style of torch.nn) built on the fused ops."""
import torch  # noqa: F401

__all__: list[str] = []
