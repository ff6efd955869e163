"""FARL's Fourier-attentive tokens and their asymmetric deep-prompt injection (SPEC §8).

- `FourierAttentiveTokens`: learnable tokens cross-attending to the amplitude and phase maps of the
  centred spectrum, taken by the fused `fourier_split` (amplitude log1p and phase in one kernel).
- `DeepPromptEncoder`: wraps a frozen stack of transformer layers ([B, N, d] → [B, N, d], e.g.
  `nn.TransformerEncoderLayer(batch_first=True)`) and inserts per-layer prompt tokens at its first
  `depth` layers (deep prompting): at layer 0 the prompts are inserted into the sequence (or
  replace placeholder tokens), at each layer l < depth the prompt slots are overwritten with that
  layer's prompts, and from layer `depth` on the slots just carry what the layers made of them.
- `FARLPromptedEncoders`: the asymmetric injection — the fused tokens are the text encoder's deep
  prompts (one set per image, shared by all class prompts), the unfused learnable tokens are the
  image encoder's.
"""
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ._core import check_choice
from .ops.fourier import fourier_split

PHASES, BRANCHES = ("cos_sin", "angle"), ("both", "amplitude", "phase")
_MAPS = {"both": ("amp", "phase"), "amplitude": ("amp",), "phase": ("phase",)}  # the maps each choice embeds

__all__ = ["FourierAttentiveTokens", "FourierTokens", "DeepPromptEncoder", "FARLPromptedEncoders", "FARLOutput"]


class FourierTokens(NamedTuple):
    """FourierAttentiveTokens' outputs, each [B, n_tokens, dim]."""
    fused: Tensor      # tokens + Linear([structure, style]): the text encoder's deep prompts
    structure: Tensor  # the tokens' attention over the phase patches
    style: Tensor      # the tokens' attention over the amplitude patches
    tokens: Tensor     # the learnable tokens themselves, unfused: the image encoder's prompts


class FourierAttentiveTokens(nn.Module):
    """FARL's Fourier-attentive tokens (SPEC §8).

    x [B, C, H, W] → FourierTokens(fused, structure, style, tokens), each [B, n_tokens, dim]: the
    learnable tokens cross-attend to phase patches (structure) and to log-amplitude patches (style)
    of the centred spectrum; a patch embedding is a Conv2d of kernel = stride = patch followed by
    LayerNorm, with no positional embedding; fused = tokens + Linear([structure, style]). H and W
    must be multiples of patch; dim of heads.

    phase: "cos_sin" embeds the phase map as (cos P, sin P), 2C channels, continuous across the
        branch cut; "angle" embeds P ∈ (−π, π] itself, C channels (discontinuous at the cut).
    branches: "both", or "amplitude" / "phase" for one branch only: the other branch's embedding,
        norm and attention are not created, its output is zeros and fused = tokens + Linear(present).
    """

    split = staticmethod(fourier_split)

    def __init__(self, in_channels: int, dim: int, n_tokens: int, patch: int, heads: int, *,
                 phase: str = "cos_sin", branches: str = "both"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.in_channels, self.dim, self.n_tokens, self.patch, self.heads = in_channels, dim, n_tokens, patch, heads
        self.phase = check_choice(phase, "phase", PHASES)
        self.branches = check_choice(branches, "branches", BRANCHES)
        present = _MAPS[branches]
        self.tokens = nn.Parameter(0.02 * torch.randn(n_tokens, dim))
        # the creation order (hence the parameter order and the draws of the default init) is the
        # two-branch module's, so its state_dicts and numerics stay as they were
        for name, maps in (("amp", in_channels), ("phase", (2 if phase == "cos_sin" else 1) * in_channels)):
            setattr(self, f"{name}_embed", nn.Conv2d(maps, dim, kernel_size=patch, stride=patch) if name in present
                    else None)
        self.amp_norm, self.phase_norm = (nn.LayerNorm(dim) if name in present else None for name in ("amp", "phase"))
        self.structure_attn, self.style_attn = (nn.MultiheadAttention(dim, heads, batch_first=True)
                                                if name in present else None for name in ("phase", "amp"))
        self.fuse = nn.Linear(len(present) * dim, dim)

    def forward(self, x: Tensor) -> FourierTokens:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise ValueError(f"x's H and W must be multiples of patch={self.patch}, got {tuple(x.shape[-2:])}")
        amplitude, phase = self.split(x, centered=True, log_amplitude=True)
        dtype = self.fuse.weight.dtype
        T = self.tokens.expand(x.shape[0], -1, -1)
        structure = style = torch.zeros_like(T)
        if self.structure_attn is not None:
            phase = torch.cat((phase.cos(), phase.sin()), 1) if self.phase == "cos_sin" else phase
            structure_keys = self.phase_norm(self.phase_embed(phase.to(dtype)).flatten(2).mT)
            structure, _ = self.structure_attn(T, structure_keys, structure_keys, need_weights=False)
        if self.style_attn is not None:
            style_keys = self.amp_norm(self.amp_embed(amplitude.to(dtype)).flatten(2).mT)
            style, _ = self.style_attn(T, style_keys, style_keys, need_weights=False)
        present = {"both": (structure, style), "phase": (structure,), "amplitude": (style,)}[self.branches]
        return FourierTokens(T + self.fuse(torch.cat(present, -1)), structure, style, T)


class DeepPromptEncoder(nn.Module):
    """A stack of transformer layers with deep prompts injected at its first `depth` layers.

    layers: the encoder's layers (an nn.ModuleList, nn.Sequential or list), each mapping
        [B, N, d_model] → [B, N, d_model]; with `freeze_encoder` their parameters stop requiring
        gradients (prompt learning: the encoder weights are never updated).
    depth: how many of the first layers receive new prompts (1 ≤ depth ≤ len(layers)).
    prompt_dim: if given, each injected layer has its own Linear(prompt_dim, d_model) mapping the
        prompts into that layer's space (a coupling function, as in multi-modal prompt learning);
        if None the prompts are used as they are (their last dim must be d_model).
    position: index of the first prompt slot in the sequence (e.g. 1 to keep a BOS/CLS token first).
    mode: "prepend" inserts n prompt slots before the layer 0 (the sequence grows by n; the output
        drops them unless keep_prompts); "replace" overwrites n existing tokens from `position` on
        (placeholder tokens, as in "a photo of a X X X X") and keeps the sequence length.

    forward(h [B, N, d_model], prompts, *, key_padding_mask=None, keep_prompts=False, **layer_kwargs):
    prompts is one tensor [B, n, prompt_dim] or [n, prompt_dim] used at every injected layer, or a
    sequence of `depth` such tensors (one per layer). key_padding_mask [B, N] (True = padding) is
    extended over the prompt slots and passed to the layers as src_key_padding_mask.
    """

    def __init__(self, layers: Sequence[nn.Module], depth: int, *, d_model: Optional[int] = None,
                 prompt_dim: Optional[int] = None, position: int = 0, mode: str = "prepend",
                 freeze_encoder: bool = True):
        super().__init__()
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(list(layers))
        if not 1 <= depth <= len(self.layers):
            raise ValueError(f"depth must lie in [1, {len(self.layers)}], got {depth}")
        if mode not in ("prepend", "replace"):
            raise ValueError(f"mode must be 'prepend' or 'replace', got {mode!r}")
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        if prompt_dim is not None and d_model is None:
            raise ValueError("d_model must be given with prompt_dim (the width of the projections)")
        self.depth, self.position, self.mode = depth, position, mode
        self.proj = None if prompt_dim is None else nn.ModuleList(nn.Linear(prompt_dim, d_model) for _ in range(depth))
        if freeze_encoder:
            for p in self.layers.parameters():
                p.requires_grad_(False)

    def _layer_prompts(self, prompts, batch: int) -> list:
        if isinstance(prompts, Tensor):
            prompts = [prompts] * self.depth
        prompts = list(prompts)
        if len(prompts) != self.depth:
            raise ValueError(f"prompts must be one tensor or {self.depth} (one per injected layer), got {len(prompts)}")
        out = []
        for i, p in enumerate(prompts):
            if p.dim() == 2:
                p = p.unsqueeze(0).expand(batch, -1, -1)
            if p.dim() != 3 or p.shape[0] != batch or p.shape[1] != prompts[0].shape[-2]:
                raise ValueError(f"prompts[{i}] must be [B={batch}, n, d] or [n, d] with the same n, "
                                 f"got {tuple(p.shape)}")
            out.append(self.proj[i](p) if self.proj is not None else p)
        return out

    def forward(self, h: Tensor, prompts, *, key_padding_mask: Optional[Tensor] = None, keep_prompts: bool = False,
                **layer_kwargs) -> Tensor:
        if h.dim() != 3:
            raise ValueError(f"h must be [B, N, d_model], got {tuple(h.shape)}")
        P = self._layer_prompts(prompts, h.shape[0])
        n, a = P[0].shape[1], self.position
        if P[0].shape[-1] != h.shape[-1]:
            raise ValueError(f"prompts map to width {P[0].shape[-1]}, the encoder's is {h.shape[-1]}")
        if a > h.shape[1] or (self.mode == "replace" and a + n > h.shape[1]):
            raise ValueError(f"the prompt slots [{a}, {a + n}) do not fit a sequence of {h.shape[1]} tokens")
        if self.mode == "prepend":
            h = torch.cat([h[:, :a], P[0].to(h.dtype), h[:, a:]], dim=1)
            if key_padding_mask is not None:
                keep = key_padding_mask.new_zeros(key_padding_mask.shape[0], n)
                key_padding_mask = torch.cat([key_padding_mask[:, :a], keep, key_padding_mask[:, a:]], dim=1)
        if key_padding_mask is not None:
            layer_kwargs["src_key_padding_mask"] = key_padding_mask
        for i, layer in enumerate(self.layers):
            if i < self.depth and (i > 0 or self.mode == "replace"):
                h = torch.cat([h[:, :a], P[i].to(h.dtype), h[:, a + n:]], dim=1)
            h = layer(h, **layer_kwargs)
        if self.mode == "prepend" and not keep_prompts:
            h = torch.cat([h[:, :a], h[:, a + n:]], dim=1)
        return h


class FARLOutput(NamedTuple):
    text: Tensor           # [B, n_text, N_text, d_text] — every text prompt under every image's fused tokens
    image: Tensor          # [B, N_image, d_image]
    tokens: FourierTokens  # the Fourier-attentive tokens of the images


class FARLPromptedEncoders(nn.Module):
    """FARL's asymmetric injection (SPEC §8): fused tokens → text encoder, learnable tokens → image encoder.

    forward(x [B, C, H, W], text [n_text, N_text, d_text] (embedded class prompts), image [B, N_image,
    d_image] (embedded patches)) → FARLOutput. The text encoder runs once per (image, text prompt)
    pair with that image's fused tokens as deep prompts; the image encoder sees the unfused tokens,
    so its output does not depend on the spectral attention or the fusion.
    """

    def __init__(self, tokens: FourierAttentiveTokens, text_encoder: DeepPromptEncoder,
                 image_encoder: DeepPromptEncoder):
        super().__init__()
        self.tokens, self.text_encoder, self.image_encoder = tokens, text_encoder, image_encoder

    def forward(self, x: Tensor, text: Tensor, image: Tensor, *,
                text_padding_mask: Optional[Tensor] = None) -> FARLOutput:
        if text.dim() != 3 or image.dim() != 3 or image.shape[0] != x.shape[0]:
            raise ValueError(f"text must be [n_text, N, d] and image [B={x.shape[0]}, N, d], got "
                             f"{tuple(text.shape)} and {tuple(image.shape)}")
        t = self.tokens(x)
        B, n_text = x.shape[0], text.shape[0]
        fused = t.fused.repeat_interleave(n_text, dim=0)  # [B·n_text, n, dim]
        text_in = text.unsqueeze(0).expand(B, -1, -1, -1).reshape(B * n_text, *text.shape[1:])
        mask = None if text_padding_mask is None else text_padding_mask.repeat(B, 1)
        text_out = self.text_encoder(text_in, fused, key_padding_mask=mask)
        image_out = self.image_encoder(image, t.tokens)
        return FARLOutput(text_out.reshape(B, n_text, *text_out.shape[1:]), image_out, t)
