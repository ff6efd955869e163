"""Modules (in the style of torch.nn) built on the fused ops."""
import torch  # noqa: F401

from .farl import DeepPromptEncoder, FARLPromptedEncoders, FourierAttentiveTokens
from .loss import SDELoss

__all__: list[str] = ["SDELoss", "FourierAttentiveTokens", "DeepPromptEncoder", "FARLPromptedEncoders"]
