"""FARL modules (SPEC §8): FourierAttentiveTokens on the fused split, deep-prompt injection and
the asymmetric text/image conditioning."""
import pytest
import torch
from torch import nn

import sdekernels
from sdekernels import reference as ref
from sdekernels.nn import DeepPromptEncoder, FARLPromptedEncoders, FourierAttentiveTokens


def _layers(n=4, d=16, heads=2):
    torch.manual_seed(0)
    return nn.ModuleList(nn.TransformerEncoderLayer(d, heads, dim_feedforward=32, dropout=0.0, batch_first=True)
                         for _ in range(n))


def _image(B=2, C=3, H=16, W=16, seed=0):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


def test_tokens_match_reference_module_and_use_the_fused_split():
    assert FourierAttentiveTokens.split is sdekernels.fourier_split
    torch.manual_seed(0)
    ours = FourierAttentiveTokens(3, 32, n_tokens=4, patch=4, heads=4)
    theirs = ref.FourierAttentiveTokens(3, 32, n_tokens=4, patch=4, heads=4)
    theirs.load_state_dict(ours.state_dict())
    x = _image()
    out, expected = ours(x), theirs(x)
    for name in out._fields:
        assert getattr(out, name).shape == (2, 4, 32)
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), atol=2e-5, rtol=1e-4)


# the two-branch module's parameters, in order: checkpoints saved before the options must still load
TWO_BRANCH_KEYS = ["tokens", "amp_embed.weight", "amp_embed.bias", "phase_embed.weight", "phase_embed.bias",
                   "amp_norm.weight", "amp_norm.bias", "phase_norm.weight", "phase_norm.bias",
                   *(f"{a}.{k}" for a in ("structure_attn", "style_attn")
                     for k in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")),
                   "fuse.weight", "fuse.bias"]


@pytest.mark.parametrize("branches", ["both", "amplitude", "phase"])
@pytest.mark.parametrize("phase", ["cos_sin", "angle"])
def test_tokens_options_match_reference_module(phase, branches):
    torch.manual_seed(0)
    ours = FourierAttentiveTokens(3, 32, n_tokens=4, patch=4, heads=4, phase=phase, branches=branches)
    theirs = ref.FourierAttentiveTokens(3, 32, n_tokens=4, patch=4, heads=4, phase=phase, branches=branches)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = _image(seed=1)
    out, expected = ours(x), theirs(x)
    for name in out._fields:
        assert getattr(out, name).shape == (2, 4, 32)
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), atol=2e-5, rtol=1e-4)
    keys = {"amplitude": ("amp_", "style_"), "phase": ("phase_", "structure_")}
    for branch, prefixes in keys.items():  # the absent branch has no parameters and zero output
        absent = branches not in ("both", branch)
        assert any(k.startswith(prefixes) for k in ours.state_dict()) != absent, branch
        assert absent == (getattr(out, "style" if branch == "amplitude" else "structure") == 0).all(), branch
    assert ours.phase_embed is None or ours.phase_embed.in_channels == (6 if phase == "cos_sin" else 3)
    assert ours.fuse.in_features == (64 if branches == "both" else 32)


def test_tokens_defaults_unchanged():
    torch.manual_seed(0)
    default = FourierAttentiveTokens(3, 16, n_tokens=2, patch=4, heads=2)
    torch.manual_seed(0)
    explicit = FourierAttentiveTokens(3, 16, n_tokens=2, patch=4, heads=2, phase="cos_sin", branches="both")
    assert list(default.state_dict()) == TWO_BRANCH_KEYS
    assert list(ref.FourierAttentiveTokens(3, 16, 2, 4, 2).state_dict()) == TWO_BRANCH_KEYS
    for (k, a), b in zip(default.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), k
    x = _image()
    for a, b in zip(default(x), explicit(x)):
        assert torch.equal(a, b)


def test_tokens_angle_phase_is_live():
    """phase="angle" embeds P itself: with the same weights on P as cos_sin puts on cos P, the
    structure tokens differ and the style tokens do not."""
    torch.manual_seed(0)
    cos_sin = FourierAttentiveTokens(3, 16, n_tokens=2, patch=4, heads=2)
    angle = FourierAttentiveTokens(3, 16, n_tokens=2, patch=4, heads=2, phase="angle")
    sd = cos_sin.state_dict()
    w = sd["phase_embed.weight"]
    sd["phase_embed.weight"] = torch.cat([w[:, :3], torch.zeros_like(w[:, 3:])], 1)
    cos_sin.load_state_dict(sd)
    angle.load_state_dict({**sd, "phase_embed.weight": w[:, :3]})
    x = _image()
    a, b = cos_sin(x), angle(x)
    assert torch.equal(a.style, b.style)
    assert (a.structure - b.structure).abs().max() > 1e-2


def test_tokens_reject_bad_options():
    for kw, name in (({"phase": "sin"}, "phase"), ({"phase": None}, "phase"), ({"branches": "style"}, "branches"),
                     ({"branches": "Both"}, "branches")):
        for cls in (FourierAttentiveTokens, ref.FourierAttentiveTokens):
            with pytest.raises(ValueError, match=name):
                cls(3, 16, 2, 4, 2, **kw)


@pytest.mark.parametrize("branches", ["both", "amplitude", "phase"])
def test_tokens_gradients_reach_parameters_and_input(branches):
    torch.manual_seed(0)
    m = FourierAttentiveTokens(3, 16, n_tokens=3, patch=8, heads=2, phase="angle" if branches == "phase" else "cos_sin",
                               branches=branches)
    x = _image(H=16, W=24).requires_grad_()
    out = m(x)
    (out.fused.square().sum() + out.style.sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_tokens_reject_bad_inputs():
    m = FourierAttentiveTokens(3, 16, n_tokens=2, patch=4, heads=2)
    with pytest.raises(ValueError):
        m(_image(C=1))
    with pytest.raises(ValueError):
        m(_image(H=10))


@pytest.mark.parametrize("mode,position", [("prepend", 0), ("prepend", 1), ("replace", 1)])
def test_deep_prompts_shapes_and_gradients(mode, position):
    enc = DeepPromptEncoder(_layers(), depth=2, d_model=16, prompt_dim=8, position=position, mode=mode)
    h = torch.randn(3, 7, 16)
    prompts = torch.randn(3, 4, 8, requires_grad=True)
    out = enc(h, prompts)
    assert out.shape == (3, 7, 16)
    if mode == "prepend":
        assert enc(h, prompts, keep_prompts=True).shape == (3, 11, 16)
    out.sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    for lin in enc.proj:
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in enc.layers.parameters())


def test_injection_reaches_exactly_the_first_depth_layers():
    depth, n, a = 2, 3, 1
    enc = DeepPromptEncoder(_layers(4), depth=depth, position=a)
    seen = []
    for layer in enc.layers:
        layer.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0].detach().clone()),
                                        with_kwargs=True)
    outs = []
    for layer in enc.layers:
        layer.register_forward_hook(lambda mod, args, out: outs.append(out.detach().clone()))
    h = torch.randn(2, 5, 16)
    prompts = [torch.randn(2, n, 16) for _ in range(depth)]
    enc(h, prompts)
    for i in range(len(enc.layers)):
        slots = seen[i][:, a:a + n]
        if i < depth:  # this layer's prompts sit in the slots
            torch.testing.assert_close(slots, prompts[i])
        else:  # no new prompts: the slots carry the previous layer's output
            torch.testing.assert_close(slots, outs[i - 1][:, a:a + n])
    # New prompts at the last injected layer: the layers before it see the same inputs, the later
    # layers see the effect only through the sequence (their slots are never overwritten).
    before = [s.clone() for s in seen]
    seen.clear()
    outs.clear()
    enc(h, [prompts[0], torch.randn(2, n, 16)])
    for i in range(depth - 1):
        torch.testing.assert_close(seen[i], before[i])
    assert not torch.allclose(seen[depth], before[depth])
    torch.testing.assert_close(seen[depth][:, a:a + n], outs[depth - 1][:, a:a + n])


def test_prompt_gradients_per_layer():
    depth = 3
    enc = DeepPromptEncoder(_layers(4), depth=depth)
    prompts = [torch.randn(2, 2, 16, requires_grad=True) for _ in range(depth)]
    enc(torch.randn(2, 5, 16), prompts).square().sum().backward()
    for i, p in enumerate(prompts):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"layer {i} prompts get no gradient"


def test_encoder_weights_untouched_by_training_the_prompts():
    enc = DeepPromptEncoder(_layers(3), depth=2, d_model=16, prompt_dim=8)
    before = {k: v.clone() for k, v in enc.layers.state_dict().items()}
    prompts = nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad] + [prompts], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        enc(torch.randn(2, 5, 16), prompts).square().mean().backward()
        opt.step()
    for k, v in enc.layers.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_key_padding_mask_is_extended_over_the_prompts():
    enc = DeepPromptEncoder(_layers(2), depth=1, position=1)
    h = torch.randn(2, 6, 16)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 4:] = True
    out = enc(h, torch.randn(3, 16), key_padding_mask=mask)
    assert out.shape == (2, 6, 16)
    # Padded tokens never influence the others: changing them changes nothing else.
    h2 = h.clone()
    h2[0, 4:] = 100.0
    p = torch.randn(3, 16)
    torch.testing.assert_close(enc(h, p, key_padding_mask=mask)[0, :4], enc(h2, p, key_padding_mask=mask)[0, :4])


def test_deep_prompt_encoder_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        DeepPromptEncoder(_layers(2), depth=3)
    with pytest.raises(ValueError, match="mode"):
        DeepPromptEncoder(_layers(2), depth=1, mode="append")
    enc = DeepPromptEncoder(_layers(2), depth=2)
    with pytest.raises(ValueError, match="prompts"):
        enc(torch.randn(2, 5, 16), [torch.randn(2, 3, 16)])
    with pytest.raises(ValueError, match="width"):
        enc(torch.randn(2, 5, 16), torch.randn(2, 3, 8))


def test_asymmetric_injection():
    torch.manual_seed(0)
    tokens = FourierAttentiveTokens(3, 8, n_tokens=2, patch=4, heads=2)
    text = DeepPromptEncoder(_layers(3, d=16), depth=2, d_model=16, prompt_dim=8, position=1)
    image = DeepPromptEncoder(_layers(2, d=12, heads=2), depth=1, d_model=12, prompt_dim=8)
    model = FARLPromptedEncoders(tokens, text, image)
    x = _image(B=2, H=8, W=8)
    out = model(x, torch.randn(5, 6, 16), torch.randn(2, 9, 12))
    assert out.text.shape == (2, 5, 6, 16) and out.image.shape == (2, 9, 12)
    # The image branch sees only the unfused tokens: no gradient to the spectral attention or fusion.
    model.zero_grad()
    out.image.sum().backward(retain_graph=True)
    assert tokens.tokens.grad.abs().sum() > 0
    for mod in (tokens.fuse, tokens.structure_attn, tokens.style_attn, tokens.amp_embed, tokens.phase_embed):
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in mod.parameters())
    # The text branch gets the fused tokens: the fusion and both attentions are trained by it.
    model.zero_grad()
    out.text.sum().backward()
    for mod in (tokens.fuse, tokens.structure_attn, tokens.style_attn):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    # Each image conditions its own text features.
    out2 = model(torch.cat([x[:1], x[:1]]), torch.randn(5, 6, 16), torch.randn(2, 9, 12))
    torch.testing.assert_close(out2.text[0], out2.text[1])
