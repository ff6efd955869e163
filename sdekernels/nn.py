"""Modules (in the style of torch.nn) built on the fused ops."""
import torch  # noqa: F401

from .farl import DeepPromptEncoder, FARLPromptedEncoders, FourierAttentiveTokens
from .loss import SDELoss
from .ops.spectrum import block_dct_lowpass, dog, esm_loss

__all__: list[str] = ["SDELoss", "FourierAttentiveTokens", "DeepPromptEncoder", "FARLPromptedEncoders", "ESMLoss",
                      "BlockDCTLowpass", "DoG"]


class ESMLoss(torch.nn.Module):
    """Explicit spectrum matching loss (SPEC §9): `loss(z, x)` = esm_loss(z, x, ...) with the
    constructor's options (variant="official" for the official Spectrum Matching code)."""

    def __init__(self, delta: float = 1.0, bins: int = 16, blur=(7, 1.2), variant: str = "library", loss: str = "kl",
                 log_power: bool = True):
        super().__init__()
        self.delta, self.bins, self.blur = delta, bins, blur
        self.variant, self.loss, self.log_power = variant, loss, log_power

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return esm_loss(z, x, delta=self.delta, bins=self.bins, blur=self.blur, variant=self.variant, loss=self.loss,
                        log_power=self.log_power)


class BlockDCTLowpass(torch.nn.Module):
    """Block-DCT low-pass (SPEC §9, DSM); `k` may be changed between calls (e.g. drawn per step)."""

    def __init__(self, k: int = 0, block: int = 8):
        super().__init__()
        self.k, self.block = k, block

    def forward(self, x: torch.Tensor, k: int | None = None) -> torch.Tensor:
        return block_dct_lowpass(x, self.k if k is None else k, block=self.block)


class DoG(torch.nn.Module):
    """Normalised difference of Gaussians (SPEC §9)."""

    def __init__(self, sigma1: float = 1.0, sigma2: float = 2.0):
        super().__init__()
        self.sigma1, self.sigma2 = sigma1, sigma2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return dog(z, self.sigma1, self.sigma2)
