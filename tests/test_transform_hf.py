"""sprintc.transform on third-party models built from their configs with random weights (no downloads):
diffusers' DiTTransformer2DModel and timm's VisionTransformer. Both are optional extras."""
import copy

import pytest
import torch
import torch.nn as nn

import sprintc
from sprintc.graph import count_flops
from sprintc.transforms import TransformError

IDENTITY = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.0},
            {"name": "fuse", "kind": "concat_linear", "init": "identity"}]
ROUTED = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "sampler": "structured", "drop": 0.75},
          {"name": "fuse", "kind": "concat_linear"}, {"name": "path_drop", "p": 0.1}]


def randomise(model):
    torch.manual_seed(0)
    for p in model.parameters():  # no zero-initialised layers that would hide a wrong wiring
        nn.init.normal_(p, std=0.05)
    return model


# ------------------------------------------------------------------------------- diffusers DiT
def diffusers_dit():
    diffusers = pytest.importorskip("diffusers")
    return randomise(diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                                     num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10))


def dit_inputs(batch):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 4, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, 10, (batch,), generator=g)


def test_diffusers_dit_identity_at_drop_0():
    m = diffusers_dit().eval()
    x, t, y = dit_inputs(2)
    ref = m(x, t, y, return_dict=False)[0]
    keys = set(m.state_dict())
    rep = sprintc.transform(m, IDENTITY + [{"name": "pdg"}])
    assert (rep.blocks, rep.tokens, rep.grid) == ("transformer_blocks", 16, (4, 4))
    assert set(m.state_dict()) - keys == {"sprint.mask_token", "sprint.fuse.linear.weight", "sprint.fuse.linear.bias"}
    out = m(x, t, y, return_dict=False)
    assert isinstance(out, tuple) and (out[0] - ref).abs().max() <= 1e-6
    assert (m(x, timestep=t, class_labels=y)[0] - ref).abs().max() <= 1e-6
    with pytest.raises(TransformError, match=r"transformed with return_dict=False fixed.*call it without return_dict"):
        m(x, t, y, return_dict=True)
    sprintc.untransform(m)
    assert torch.equal(m(x, t, y).sample, ref)


def test_diffusers_dit_routed_training_flops_and_pdg():
    m = diffusers_dit()
    dense = copy.deepcopy(m)
    rep = sprintc.transform(m, ROUTED + [{"name": "pdg"}])
    assert (rep.kept, rep.passes) == (4, ["partition", "route", "path_drop", "fuse", "pdg"])
    x, t, y = dit_inputs(4)
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    loss = (m(x, t, y)[0] - x).square().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and m.sprint.fuse.linear.weight.grad is not None

    # FLOPs: the dense model minus two middle blocks at 16 tokens plus the same at 4, plus the fusion
    blk = lambda n: count_flops(lambda: m.transformer_blocks[1](torch.randn(4, n, 32), timestep=t, class_labels=y))  # noqa: E731
    fuse = count_flops(lambda: m.sprint.fuse(torch.randn(4, 16, 32), torch.randn(4, 16, 32)))
    f_dense = count_flops(lambda: dense.train()(x, t, y))
    f_routed = count_flops(lambda: m(x, t, y))
    assert f_routed == f_dense - 2 * (blk(16) - blk(4)) + fuse
    assert f_routed / f_dense == pytest.approx(rep.flop_ratio, rel=1e-9)

    # PDG on [cond; uncond]: the null class is row num_classes of the label embedding
    m.eval()
    null = torch.full_like(y, 10)
    g = m.forward_guidance(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))[0]
    assert (g[:4] - m(x, t, y)[0]).abs().max() <= 1e-5
    assert (g[4:] - m(x, t, null, path_drop=torch.ones(4, dtype=torch.bool))[0]).abs().max() <= 1e-5


class Contract(nn.Module):
    """docs/TRANSFORM.md's adapter to the model contract forward(x, t, y) -> prediction."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, y):
        return self.net(x, t, y, return_dict=False)[0]


def test_diffusers_dit_wrapped_to_the_model_contract():
    m = Contract(diffusers_dit()).eval()
    x, t, y = dit_inputs(2)
    ref = m(x, t, y)
    rep = sprintc.transform(m, IDENTITY + [{"name": "pdg"}])
    assert rep.blocks == "net.transformer_blocks" and rep.passes == ["partition", "route", "fuse", "pdg"]
    assert isinstance(m(x, t, y), torch.Tensor) and (m(x, t, y) - ref).abs().max() <= 1e-6


@pytest.mark.slow
def test_diffusers_dit_lowered_with_inductor_groups_its_blocks_and_equals_eager():
    """A transformed user model lowered with the inductor target: its routed blocks run as one region of two
    (target.region_blocks), the routing glue with the fusion as another; the routed step is eager's."""
    from sprintc import routing
    from sprintc.targets_api import lower, lowering_of

    m = diffusers_dit()
    for e in m.modules():  # diffusers' label dropout draws in training mode: off, so both runs see the same labels
        if hasattr(e, "dropout_prob"):
            e.dropout_prob = 0.0
    sprintc.transform(m, ROUTED + [{"name": "pdg"}])
    ref = copy.deepcopy(m)
    keys = list(m.state_dict())
    lower(m, {"name": "inductor", "dtype": "float32"}, device="cpu")
    regions = lowering_of(m).regions
    assert {"_sprintc_group_0", "_sprintc_glue_0", "transformer_blocks.0", "transformer_blocks.3"} <= set(regions)
    assert "transformer_blocks.1" not in regions and list(m.state_dict()) == keys
    x, t, y = dit_inputs(4)
    ids = routing.sample_ids(m.sprint.plan, 4, generator=torch.Generator().manual_seed(0))
    drop = torch.tensor([False, True, False, False])
    outs = []
    for net in (m.train(), ref.train()):
        out = net(x, t, y, ids_keep=ids, path_drop=drop)[0]
        out.square().mean().backward()
        outs.append(out)
    assert (outs[0] - outs[1]).norm() / outs[1].norm() < 1e-2  # Inductor's CPU code: 1e-3 with single-block regions too
    for (name, a), b in zip(m.named_parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-2, atol=1e-3, msg=name)


def test_diffusers_dit_skips_the_middle_for_left_out_samples():
    """Its per-sample middle inputs (timestep, class labels) are cut to middle_rows; the left-out samples' output is
    what path drop gives them when the middle runs on every sample."""
    from sprintc import routing

    m = diffusers_dit()
    for e in m.modules():
        if hasattr(e, "dropout_prob"):
            e.dropout_prob = 0.0
    full = copy.deepcopy(m)
    sprintc.transform(m, ROUTED)
    sprintc.transform(full, ROUTED[:3] + [{"name": "path_drop", "p": 0.1, "skip_middle": False}])
    full.load_state_dict(m.state_dict())  # the same fusion and mask token
    x, t, y = dit_inputs(4)
    ids = routing.sample_ids(m.sprint.plan, 4, generator=torch.Generator().manual_seed(0))
    drop, rows = torch.tensor([True, False, True, False]), torch.tensor([1, 2, 3])
    a = m.train()(x, t, y, ids_keep=ids, path_drop=drop, middle_rows=rows)[0]
    b = full.train()(x, t, y, ids_keep=ids, path_drop=drop)[0]
    assert (a - b).abs().max() <= 1e-5


# ------------------------------------------------------------------------------- timm ViT
def vit(**kw):
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    return randomise(VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=10, **kw))


def test_timm_vit_identity_at_drop_0():
    m = vit().eval()
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    rep = sprintc.transform(m, IDENTITY)
    assert (rep.tokens, rep.grid, rep.protected) == (65, (8, 8), (0,))
    assert (m(x) - ref).abs().max() <= 1e-6
    sprintc.untransform(m)
    assert torch.equal(m(x), ref)


@pytest.mark.parametrize("kw, prefix", [({}, 1), ({"reg_tokens": 4, "no_embed_class": True}, 5)])
def test_timm_vit_classification_training_keeps_prefix_tokens(kw, prefix):
    m = vit(**kw)
    dense = copy.deepcopy(m)
    rep = sprintc.transform(m, ROUTED)
    assert rep.protected == tuple(range(prefix)) and (rep.tokens, rep.kept) == (64 + prefix, 16 + prefix)
    got = {}
    m.blocks[0].register_forward_hook(lambda mod, a, out: got.update(enc=out))
    m.blocks[1].register_forward_pre_hook(lambda mod, a: got.update(mid=a[0]))
    x, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(m(x), labels)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and got["mid"].shape == (4, 16 + prefix, 64)
    assert torch.equal(got["mid"][:, :prefix], got["enc"][:, :prefix])  # class / register tokens always kept

    blk = lambda n: count_flops(lambda: m.blocks[1](torch.randn(4, n, 64)))  # noqa: E731
    fuse = count_flops(lambda: m.sprint.fuse(torch.randn(4, 64 + prefix, 64), torch.randn(4, 64 + prefix, 64)))
    f_dense = count_flops(lambda: dense.train()(x))
    f_routed = count_flops(lambda: m(x))
    assert f_routed == f_dense - 2 * (blk(64 + prefix) - blk(16 + prefix)) + fuse
    assert f_routed / f_dense == pytest.approx(rep.flop_ratio, rel=1e-9)


def test_timm_vit_has_no_null_class():
    m = vit()
    with pytest.raises(sprintc.SprintcError, match="passes.pdg: VisionTransformer has no null class"):
        sprintc.transform(m, ROUTED + [{"name": "pdg"}])
    assert "pdg" not in [p.name for p in sprintc.TransformConfig().resolved(null_class=False)]
