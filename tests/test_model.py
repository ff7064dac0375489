"""The model's attention against a textbook transcription (per-head permute, norm, RoPE by stacking
rotated pairs), for every q/k norm, with and without RoPE and with per-sample (routed) RoPE tables."""
import pytest
import torch
import torch.nn.functional as F

from sprintc.model import Attention, rope_angles


def textbook(attn, x, rope):
    B, N, D = x.shape
    H = attn.heads
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        cos, sin = rope.unsqueeze(-3).chunk(2, -1)

        def rot(t):
            a, b = t[..., 0::2], t[..., 1::2]
            return torch.stack((-b, a), -1).flatten(-2)

        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("norm", ["rms", "layer", "none"])
@pytest.mark.parametrize("rope_kind", ["shared", "routed", None])
def test_attention_matches_textbook(norm, rope_kind):
    torch.manual_seed(0)
    attn = Attention(32, 4, norm)
    for m in (attn.q_norm, attn.k_norm):  # non-trivial norm weights
        for p in m.parameters():
            p.data.uniform_(0.5, 1.5)
    x = torch.randn(3, 16, 32)
    rope = rope_angles((4, 4), 8)
    if rope_kind == "routed":  # a different subset of the table per sample, as the route pass gathers it
        rope = torch.stack([rope[torch.randperm(16)] for _ in range(3)])
    elif rope_kind is None:
        rope = None
    with torch.no_grad():
        assert torch.allclose(attn(x, rope), textbook(attn, x, rope), atol=1e-5)


def test_rms_rope_attention_gradients_match_textbook():
    torch.manual_seed(1)
    attn = Attention(32, 4, "rms")
    attn.q_norm.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 32, requires_grad=True)
    rope = rope_angles((4, 4), 8)
    g1 = torch.autograd.grad(attn(x, rope).square().sum(), [x, attn.q_norm.weight, attn.qkv.weight])
    g2 = torch.autograd.grad(textbook(attn, x, rope).square().sum(), [x, attn.q_norm.weight, attn.qkv.weight])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
