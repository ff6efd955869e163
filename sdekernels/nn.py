"""Modules (in the style of torch.nn) built on the fused ops."""
import torch  # noqa: F401

from .farl import DeepPromptEncoder, FARLPromptedEncoders, FourierAttentiveTokens
from .loss import SDELoss
from .ops.contrastive import siglip_loss
from .ops.spectrum import block_dct_lowpass, dog, esm_loss

__all__: list[str] = ["SDELoss", "SigLipLoss", "FourierAttentiveTokens", "DeepPromptEncoder", "FARLPromptedEncoders",
                      "ESMLoss", "BlockDCTLowpass", "DoG"]


class SigLipLoss(torch.nn.Module):
    """open_clip's ``SigLipLoss`` on the fused `siglip_loss` (SPEC §6): same constructor arguments
    (cache_labels, rank, world_size, dist_impl) and call ``loss(image_features, text_features,
    logit_scale, logit_bias=None, output_dict=False)``; extra keywords are ignored.

    With world_size > 1 (under torch.distributed) each rank's rows meet the columns gathered from
    every rank (with gradient), divided by the local batch: open_clip's per-rank loss, whatever
    its dist_impl (they differ only in how the columns travel). Their exchange is an all-gather,
    except dist_impl="ring": siglip_loss's ring (memory O(B_local·d) per rank). Features are used as given
    (open_clip's models normalise them); normalize=True normalises them first.
    """

    def __init__(self, cache_labels: bool = False, rank: int = 0, world_size: int = 1, dist_impl=None, *,
                 normalize: bool = False):
        super().__init__()
        if dist_impl not in (None, "bidir", "shift", "reduce", "gather", "ring"):
            raise ValueError(f"dist_impl must be None, 'bidir', 'shift', 'reduce', 'gather' or 'ring', "
                             f"got {dist_impl!r}")
        if int(world_size) < 1 or not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, "
                             f"world_size={world_size}")
        self.cache_labels, self.dist_impl = cache_labels, dist_impl
        self.rank, self.world_size = int(rank), int(world_size)
        self.normalize = normalize

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False, **model_outputs):
        gather = ("ring" if self.dist_impl == "ring" else True) if self.world_size > 1 else False
        loss = siglip_loss(image_features, text_features, logit_scale, 0.0 if logit_bias is None else logit_bias,
                           normalize=self.normalize, gather=gather, local_loss=True)
        return {"contrastive_loss": loss} if output_dict else loss


class ESMLoss(torch.nn.Module):
    """Explicit spectrum matching loss (SPEC §9): `loss(z, x)` = esm_loss(z, x, ...) with the
    constructor's options (variant="official" for the official Spectrum Matching code)."""

    def __init__(self, delta: float = 0.0, bins: int = 16, blur=(7, 1.2), variant: str = "library", loss: str = "kl",
                 log_power: bool = True, keep_dc: bool = False):
        super().__init__()
        self.delta, self.bins, self.blur = delta, bins, blur
        self.variant, self.loss, self.log_power, self.keep_dc = variant, loss, log_power, keep_dc

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return esm_loss(z, x, delta=self.delta, bins=self.bins, blur=self.blur, variant=self.variant, loss=self.loss,
                        log_power=self.log_power, keep_dc=self.keep_dc)


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
