"""sprintc.transform on DiTs written the way users write them (defined here, facebookresearch/DiT style),
with bad input. diffusers and timm models: test_transform_hf.py."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import sprintc
from sprintc.graph import count_flops
from sprintc.errors import SpecError, SprintcError
from sprintc.transforms import TransformConfig, TransformError, load_user_model

IDENTITY = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.0},
            {"name": "fuse", "kind": "concat_linear", "init": "identity"}]
ROUTED = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "sampler": "structured", "drop": 0.75},
          {"name": "fuse", "kind": "concat_linear"}, {"name": "path_drop", "p": 0.1}, {"name": "pdg"}]


# ------------------------------------------------------------------------------- a user's DiT
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch, cin, dim):
        super().__init__()
        self.patch_size, self.grid_size = (patch, patch), (img_size // patch, img_size // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(cin, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq=64):
        super().__init__()
        self.freq, self.mlp = freq, nn.Sequential(nn.Linear(freq, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        half = self.freq // 2
        f = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        a = t[:, None].float() * f[None]
        return self.mlp(torch.cat([a.cos(), a.sin()], -1))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, dim, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + (dropout_prob > 0), dim)
        self.num_classes, self.dropout_prob = num_classes, dropout_prob

    def forward(self, labels, train):
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


def rotate_half(x):
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:  # (N, 2 * head_dim) or routed (B, M, 2 * head_dim): [cos | sin]
            cos, sin = rope.unsqueeze(-3).chunk(2, -1)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class DiTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c, rope=None):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, sc1), rope)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, sc2))


class FinalLayer(nn.Module):
    def __init__(self, dim, patch, cout):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * cout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """facebookresearch/DiT's structure: absolute pos-embed, `y_embedder(y, self.training)`, unpatchify from
    `int(x.shape[1] ** 0.5)`. rope=True passes RoPE angles to every block by keyword (a per-token side input)."""

    def __init__(self, input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=4, num_heads=2,
                 num_classes=10, class_dropout_prob=0.1, rope=False):
        super().__init__()
        self.out_channels = in_channels
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = nn.Parameter(torch.randn(1, self.x_embedder.num_patches, hidden_size) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        if rope:
            hd, n = hidden_size // num_heads, self.x_embedder.num_patches
            ang = torch.arange(n)[:, None] * 10000 ** (-torch.arange(hd // 2) / (hd // 2))[None]
            ang = ang.repeat_interleave(2, -1)
            self.register_buffer("rope", torch.cat([ang.cos(), ang.sin()], -1), persistent=False)
        else:
            self.rope = None
        for p in self.parameters():  # random weights everywhere (DiT zero-initialises adaLN; that would hide bugs)
            nn.init.normal_(p, std=0.05)

    def unpatchify(self, x):
        c, p = self.out_channels, self.x_embedder.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, w * p))

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = block(x, c, rope=self.rope) if self.rope is not None else block(x, c)
        return self.unpatchify(self.final_layer(x, c))


class JointDiT(DiT):
    """Single-stream joint attention: 4 'text' tokens per label appended to the 16 image tokens."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.text = nn.Embedding(10, 4 * 64)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        h = torch.cat([x, self.text(y).view(-1, 4, 64)], 1)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h[:, :16], c))


def tiny_dit():
    """The factory `sprintc train --model test_transform:tiny_dit` imports."""
    torch.manual_seed(0)
    return DiT()


def inputs(batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.rand(batch, generator=g), torch.randint(0, 10, (batch,), generator=g)


# ------------------------------------------------------------------------------- equivalence
def test_identity_at_drop_0_then_untransform_restores():
    torch.manual_seed(0)
    m = DiT().eval()
    x, t, y = inputs()
    ref = m(x, t, y)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    rep = sprintc.transform(m, IDENTITY)
    assert rep.blocks == "blocks" and rep.stages == {"encoder": [0], "middle": [1, 2], "decoder": [3]}
    assert (rep.tokens, rep.kept, rep.grid) == (16, 16, (4, 4))
    new = set(m.state_dict()) - set(sd)
    assert set(sd) <= set(m.state_dict()) and new == {"sprint.mask_token", "sprint.fuse.linear.weight", "sprint.fuse.linear.bias"}
    assert rep.new_parameters == {"sprint.mask_token": 64, "sprint.fuse.linear.weight": 64 * 128, "sprint.fuse.linear.bias": 64}
    assert (m(x, t, y) - ref).abs().max() <= 1e-6
    with pytest.raises(TransformError, match="already transformed.*untransform"):
        sprintc.transform(m, IDENTITY)
    sprintc.untransform(m)
    assert not hasattr(m, "sprint") and "forward" not in m.__dict__
    assert m.state_dict().keys() == sd.keys() and all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    assert torch.equal(m(x, t, y), ref)
    with pytest.raises(TransformError, match="not transformed"):
        sprintc.untransform(m)


def test_rope_side_input_is_routed_with_the_tokens():
    """RoPE angles reach the middle blocks by keyword; with every token kept in a shuffled order the output
    is unchanged only if the angles are gathered with the same indices as the tokens."""
    torch.manual_seed(0)
    m = DiT(rope=True).eval()
    x, t, y = inputs()
    ref = m(x, t, y)
    sprintc.transform(m, IDENTITY)
    assert m.sprint.graph_code.count("gather_tokens(") == 2  # the token stream and the angles
    perm = torch.stack([torch.randperm(16), torch.randperm(16)])
    assert (m(x, t, y, ids_keep=perm) - ref).abs().max() <= 1e-5
    assert (m(x, t, y) - ref).abs().max() <= 1e-6


# ------------------------------------------------------------------------------- routed training
def test_routed_training_step_and_flops_fall_as_predicted():
    torch.manual_seed(0)
    m = DiT()
    dense = copy.deepcopy(m)
    rep = sprintc.transform(m, ROUTED)
    assert (rep.tokens, rep.kept) == (16, 4) and rep.passes == ["partition", "route", "path_drop", "fuse", "pdg"]
    x, t, y = inputs(4)
    m.train()
    seen = {}
    m.blocks[1].register_forward_pre_hook(lambda mod, a: seen.update(mid=a[0].shape))
    m.blocks[3].register_forward_pre_hook(lambda mod, a: seen.update(dec=a[0].shape))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    loss = (m(x, t, y) - x).square().mean()
    loss.backward()
    opt.step()
    assert seen == {"mid": (4, 4, 64), "dec": (4, 16, 64)}
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad), "every parameter gets a gradient"
    assert not torch.equal(before["sprint.fuse.linear.weight"], m.sprint.fuse.linear.weight)

    # prediction from the stage sizes: the dense model, minus two middle blocks at 16 tokens, plus the same two
    # at 4 tokens, plus the fusion at 16 tokens (gathers, scatters and the mask token cost no FLOPs)
    c = torch.randn(4, 64)
    blk = lambda n: count_flops(lambda: m.blocks[1](torch.randn(4, n, 64), c))  # noqa: E731
    fuse = count_flops(lambda: m.sprint.fuse(torch.randn(4, 16, 64), torch.randn(4, 16, 64)))
    f_dense = count_flops(lambda: dense.train()(x, t, y))
    f_routed = count_flops(lambda: m(x, t, y))
    predicted = f_dense - 2 * (blk(16) - blk(4)) + fuse
    assert f_routed == predicted
    assert f_routed / f_dense == pytest.approx(rep.flop_ratio, rel=1e-9)
    assert rep.flops_dense * 4 == f_dense and f_routed / f_dense < 0.75
    # the training step (forward + backward) falls by the same ratio, up to the input-gradient-free stem
    step = lambda model: count_flops(lambda: (model(x, t, y) - x).square().mean().backward())  # noqa: E731
    assert step(m) / step(dense) == pytest.approx(rep.flop_ratio, rel=0.01)
    # routing off (full-token fine-tuning) and eval are dense
    m.sprint.routing = False
    assert m(x, t, y).shape == x.shape
    m.eval()
    assert count_flops(lambda: m(x, t, y)) == f_dense + fuse


def test_pdg_guidance_halves():
    """forward_guidance on [cond; uncond]: the first half is the dense conditional prediction, the second
    the path-dropped model with the null label."""
    torch.manual_seed(0)
    m = DiT()
    sprintc.transform(m, ROUTED)
    m.eval()
    x, t, y = inputs(3)
    null = torch.full_like(y, 10)
    out = m.forward_guidance(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    assert (out[:3] - m(x, t, y)).abs().max() <= 1e-5
    weak = m(x, t, null, path_drop=torch.ones(3, dtype=torch.bool))
    assert (out[3:] - weak).abs().max() <= 1e-5


def test_text_tokens_protected_by_function():
    torch.manual_seed(0)
    m = JointDiT()
    with pytest.raises(TransformError, match=r"grid 4x4 \(16 tokens\) does not fit.*blocks\.\* see 20 tokens.*protected"):
        sprintc.transform(m, ROUTED)
    rep = sprintc.transform(m, ROUTED, protected=lambda n: range(16, n))
    assert (rep.tokens, rep.kept, rep.protected) == (20, 8, (16, 17, 18, 19))
    got = {}
    m.blocks[0].register_forward_hook(lambda mod, a, out: got.update(enc=out))
    m.blocks[1].register_forward_pre_hook(lambda mod, a: got.update(mid=a[0]))
    m.train()
    x, t, y = inputs(3)
    m(x, t, y).mean().backward()
    assert got["mid"].shape == (3, 8, 64)
    assert torch.equal(got["mid"][:, :4], got["enc"][:, 16:])  # protected first, every sample, every step


def test_filter_fn_chooses_the_middle():
    torch.manual_seed(0)
    m = DiT(depth=5)
    rep = sprintc.transform(m, [{"name": "partition"}, {"name": "route", "drop": 0.5, "sampler": "random"}],
                            filter_fn=lambda mod, fqn: fqn in ("blocks.2", "blocks.3"))
    assert rep.stages == {"encoder": [0, 1], "middle": [2, 3], "decoder": [4]}
    assert (rep.kept, rep.passes) == (8, ["partition", "route"])
    sprintc.untransform(m)
    with pytest.raises(TransformError, match=r"matched none of the 5 blocks blocks\.0 \.\. blocks\.4"):
        sprintc.transform(m, ROUTED, filter_fn=lambda mod, fqn: False)
    with pytest.raises(TransformError, match=r"blocks\.1, blocks\.3; the routed middle must be contiguous"):
        sprintc.transform(m, ROUTED, filter_fn=lambda mod, fqn: fqn in ("blocks.1", "blocks.3"))
    assert not hasattr(m, "sprint")


def test_default_config_is_the_reference_pipeline():
    torch.manual_seed(0)
    m = DiT(depth=6)
    spec = sprintc.load_spec({"model": {"depth": 6}, "passes": ROUTED})
    rep = sprintc.transform(m)
    assert rep.passes == ["partition", "route", "path_drop", "fuse", "pdg"]
    assert rep.stages == {"encoder": [0, 1], "middle": [2, 3], "decoder": [4, 5]} and rep.kept == 4
    assert m.sprint.path_drop_p == 0.1 and "x0." in str(rep)
    # the spec's own pass objects are accepted as they are (what `sprintc train --model` passes)
    assert TransformConfig.model_validate({"passes": spec.passes}) == TransformConfig(passes=ROUTED)


# ------------------------------------------------------------------------------- order with compile / DDP / FSDP
def test_compile_after_transform():
    torch.manual_seed(0)
    m = DiT()
    sprintc.transform(m, ROUTED)
    x, t, y = inputs()
    cm = torch.compile(m, backend="eager")
    m.eval()
    assert (cm(x, t, y) - m(x, t, y)).abs().max() <= 1e-6
    with pytest.raises(TransformError, match=r"already wrapped by torch.compile.*transform, then compile, then wrap"):
        sprintc.transform(torch.compile(DiT(), backend="eager"))
    inner = DiT()
    inner.blocks[0].compile(backend="eager")
    with pytest.raises(TransformError, match=r"blocks\.0 \(DiTBlock\) is already wrapped by Module.compile"):
        sprintc.transform(inner)


def test_ddp_and_fsdp_after_transform(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        x, t, y = inputs()
        m = DiT()
        sprintc.transform(m, ROUTED)
        ddp = DDP(m)
        ddp(x, t, y).square().mean().backward()
        assert m.sprint.fuse.linear.weight.grad is not None
        with pytest.raises(TransformError, match="already wrapped by DistributedDataParallel"):
            sprintc.transform(ddp)
        m2 = DiT()
        sprintc.transform(m2, ROUTED)
        fully_shard(m2, mesh=init_device_mesh("cpu", (1,)))
        m2(x, t, y).square().mean().backward()
        with pytest.raises(TransformError, match=r"already wrapped by FSDP2 fully_shard.*transform, then compile, then wrap"):
            sprintc.untransform(m2)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------- bad input
class Tokens(nn.Module):
    """forward(x) on a (B, 4, 8, 8) image: conv patchify to 16 tokens of width 32, `blocks`, mean-pool."""

    def __init__(self, blocks, extra=None):
        super().__init__()
        self.embed = nn.Conv2d(4, 32, 2, 2)
        self.blocks = blocks
        self.extra = extra

    def forward(self, x):
        h = self.embed(x).flatten(2).transpose(1, 2)
        for b in self.blocks:
            h = b(h)
        if self.extra is not None:
            for b in self.extra:
                h = b(h)
        return h.mean(1)


class MlpBlock(nn.Module):
    def __init__(self, shrink=False):
        super().__init__()
        self.fc, self.shrink = nn.Linear(32, 32), shrink

    def forward(self, x):
        x = x + self.fc(x)
        return x[:, ::2] if self.shrink else x


class OtherBlock(MlpBlock):
    pass


class Branchy(Tokens):
    def forward(self, x):
        h = self.embed(x).flatten(2).transpose(1, 2)
        if h.mean() > 0:  # a branch on a tensor value
            h = -h
        for b in self.blocks:
            h = b(h)
        return h.mean(1)


class TimeEmbed(nn.Module):
    """Holds a list of identical composite modules (a false block-stack candidate) and code fx cannot trace."""

    def __init__(self, data_dependent=False):
        super().__init__()
        self.layers, self.data_dependent = nn.ModuleList([MlpBlock(), MlpBlock()]), data_dependent

    def forward(self, t):
        h = t[:, None, None].expand(-1, 1, 32)
        if (h.abs().max() > 100) if self.data_dependent else len(t) > 1:  # len of the batch: not fx-traceable
            h = h / 100
        for layer in self.layers:
            h = layer(h)
        return h


class Timed(Tokens):
    def __init__(self, data_dependent=False):
        super().__init__(nn.ModuleList([MlpBlock() for _ in range(4)]))
        self.temb = TimeEmbed(data_dependent)

    def forward(self, x, t):
        h = self.embed(x).flatten(2).transpose(1, 2) + self.temb(t)
        for b in self.blocks:
            h = b(h)
        return h.mean(1)


EX = (torch.randn(2, 4, 8, 8),)
MIN = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.5, "sampler": "random"}]


def test_bad_models_get_clear_errors():
    with pytest.raises(TransformError, match="Tokens has no block stack"):
        sprintc.transform(Tokens(nn.ModuleList([MlpBlock()])), MIN, example_inputs=EX)
    shrink = Tokens(nn.ModuleList([MlpBlock(shrink=True) for _ in range(4)]))
    with pytest.raises(TransformError, match=r"'blocks': the blocks are not shape-preserving: blocks\.0 maps \(2, 16, 32\) to \(2, 8, 32\)"):
        sprintc.transform(shrink, MIN, example_inputs=EX)
    two = Tokens(nn.ModuleList([MlpBlock() for _ in range(4)]), nn.ModuleList([OtherBlock() for _ in range(3)]))
    with pytest.raises(TransformError, match=r"several block stacks: 'blocks' \(4 x MlpBlock.*'extra' \(3 x OtherBlock.*blocks='...'"):
        sprintc.transform(two, MIN, example_inputs=EX)
    rep = sprintc.transform(two, MIN, blocks="extra", example_inputs=EX)
    assert rep.blocks == "extra" and rep.stages["middle"] == [1] and rep.grid == (4, 4)
    with pytest.raises(TransformError, match=r"blocks='nope'.*no submodule 'nope'; lists of blocks in it: 'blocks' \(4 x MlpBlock\)"):
        sprintc.transform(Tokens(nn.ModuleList([MlpBlock() for _ in range(4)])), MIN, blocks="nope", example_inputs=EX)
    with pytest.raises(TransformError, match=r"torch.fx could not trace Branchy.forward.*TraceError.*test_transform.py:\d+ \(if h.mean\(\) > 0:"):
        sprintc.transform(Branchy(nn.ModuleList([MlpBlock() for _ in range(4)])), MIN, example_inputs=EX)
    ok = Tokens(nn.ModuleList([MlpBlock() for _ in range(4)]))
    with pytest.raises(TransformError, match=r"grid 3x3 \(9 tokens\) does not fit the model: the blocks blocks\.\* see 16 tokens"):
        sprintc.transform(ok, MIN, example_inputs=EX, grid=(3, 3))
    with pytest.raises(TransformError, match=r"no patch-embedding convolution.*example_inputs"):
        sprintc.transform(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), MIN)
    with pytest.raises(TransformError, match=r"example_inputs do not fit Tokens.forward\(x\)"):
        sprintc.transform(ok, MIN, example_inputs=(EX[0], EX[0]))
    with pytest.raises(SprintcError, match=r"passes\.partition: encoder 2 \+ decoder 2 blocks leave no middle block of the 4 in blocks"):
        sprintc.transform(ok, example_inputs=EX)
    assert not hasattr(ok, "sprint") and "forward" not in ok.__dict__
    with pytest.raises(SprintcError, match=r"passes\.route: drop: a structured sampler cannot drop 0\.3 of a 4x4 token grid"):
        sprintc.transform(ok, [MIN[0], {"name": "route", "drop": 0.3}], example_inputs=EX)
    with pytest.raises(SprintcError, match=r"passes\.pdg: Tokens has no null class"):
        sprintc.transform(ok, [MIN[0], {"name": "pdg"}], example_inputs=EX)


def test_a_list_that_is_no_stack_stays_an_opaque_call():
    ex = (torch.randn(2, 4, 8, 8), torch.rand(2))
    rep = sprintc.transform(Timed(), MIN, example_inputs=ex)
    assert rep.blocks == "blocks" and rep.grid == (4, 4)
    with pytest.raises(TransformError, match=r"shape propagation of Timed on meta tensors failed in temb \(TimeEmbed\).*must not read tensor values"):
        sprintc.transform(Timed(data_dependent=True), MIN, example_inputs=ex)


def test_bad_configs():
    m = DiT()
    with pytest.raises(SpecError, match=r"passes\[1\]\.drop: .*less than 1"):
        sprintc.transform(m, {"passes": [{"name": "partition"}, {"name": "route", "drop": 1.5}]})
    with pytest.raises(SpecError, match=r"passes\[0\]"):
        sprintc.transform(m, [{"name": "partitoin"}])
    with pytest.raises(SpecError, match=r"pass 'route' is listed 2 times"):
        sprintc.transform(m, [{"name": "route"}, {"name": "route"}])
    with pytest.raises(SpecError, match="expected a TransformConfig"):
        sprintc.transform(m, "partition")
    with pytest.raises(TransformError, match=r"protected: indices 16 are outside the 16 tokens"):
        sprintc.transform(m, ROUTED, protected=[16])
    assert not hasattr(m, "sprint")


def test_calls_are_checked():
    torch.manual_seed(0)
    m = DiT()
    sprintc.transform(m, IDENTITY)
    x, t, y = inputs()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        m(x, t, y, z=1)
    with pytest.raises(TypeError, match="missing y"):
        m(x, t)


# ------------------------------------------------------------------------------- user models for training
def test_load_user_model(tmp_path, monkeypatch):
    m = load_user_model("test_transform:tiny_dit")
    assert isinstance(m, DiT)
    (tmp_path / "mymodels.py").write_text("import torch\ndef small():\n    return torch.nn.Linear(2, 2)\n"
                                          "def broken():\n    raise RuntimeError('no weights')\nNOT_A_FACTORY = 3\n"
                                          "def not_module():\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    assert isinstance(load_user_model("mymodels:small"), nn.Linear)
    assert isinstance(load_user_model(f"{tmp_path / 'mymodels.py'}:small"), nn.Linear)
    for ref, msg in [("mymodels", "expected package.module:factory"),
                     ("nosuchpkg.mod:f", "cannot import nosuchpkg.mod"),
                     ("mymodels:nothere", "has no 'nothere'; callables in it: broken, not_module, small"),
                     ("mymodels:NOT_A_FACTORY", "is a int, not a factory"),
                     ("mymodels:broken", r"mymodels.broken\(\) failed: RuntimeError: no weights"),
                     ("mymodels:not_module", "returned a int, not an nn.Module"),
                     ("missing.py:f", "file missing.py not found")]:
        with pytest.raises(TransformError, match=msg):
            load_user_model(ref)


def digits_dit():
    """A user DiT for the digits spec (1 x 16 x 16 images, 10 classes)."""
    torch.manual_seed(0)
    return DiT(input_size=16, patch_size=2, in_channels=1, hidden_size=32, depth=4, num_heads=2)


TRAIN_SPEC = {
    "extends": "digits_sprint", "name": "user_dit",
    "passes": [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.75}, {"name": "fuse"},
               {"name": "path_drop", "p": 0.1}, {"name": "pdg"}],
    "train": {"stages": [{"name": "pretrain", "steps": 3, "batch": 8, "lr": 1e-3, "routing": True},
                         {"name": "finetune", "steps": 1, "batch": 8, "lr": 1e-3, "routing": False}],
              "log_every": 1, "checkpoint_every": 2},
    "sample": {"steps": 2},
}


def _sprint_keys(run):
    from safetensors.torch import load_file

    return {k for k in load_file(str(run / "checkpoints" / "step_000004" / "model.safetensors")) if k.startswith("sprint.")}


def test_train_a_transformed_user_model(tmp_path):
    """The hook of `sprintc train --model`: load the factory, apply the spec's passes, train (flow objective,
    routed stage then full-token stage), checkpoint, sample with PDG."""
    from sprintc.train import train

    spec = sprintc.load_spec(TRAIN_SPEC)
    model = load_user_model("test_transform:digits_dit")
    rep = sprintc.transform(model, {"passes": spec.passes})
    assert (rep.tokens, rep.kept) == (64, 16)
    res = train(spec, tmp_path / "run", model=model, model_ref="test_transform:digits_dit", progress=False)
    assert res["step"] == 4 and all(math.isfinite(v) for v in res["losses"])
    assert _sprint_keys(tmp_path / "run") == {"sprint.mask_token", "sprint.fuse.linear.weight", "sprint.fuse.linear.bias"}
    assert res["samples"] and (tmp_path / "run" / "samples" / "final.png").stat().st_size > 0


def test_train_cli_applies_the_spec_passes_to_a_user_model(tmp_path, monkeypatch):
    import yaml

    from sprintc.cli import main

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(TRAIN_SPEC))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "spec.yaml", "--model", "test_transform:digits_dit", "--out", "run", "--no-progress"]) == 0
    assert _sprint_keys(tmp_path / "run") == {"sprint.mask_token", "sprint.fuse.linear.weight", "sprint.fuse.linear.bias"}
    # inference rebuilds the transformed user model from the checkpoint's model reference
    from sprintc.checkpoint import load_for_inference

    model = load_for_inference(tmp_path / "run")
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([3, 10])
    assert isinstance(model, DiT) and model.forward_guidance(x, t, y).shape == x.shape
