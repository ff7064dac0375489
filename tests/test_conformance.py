"""sprintc computes what the reference SPRINT SiT computes: the fixture's numbers, and for other configs an
independent transcription of the reference (tests/reference_sit.py) that is itself checked on the fixture."""
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

import sprintc
from sprintc.errors import CheckpointError
from sprintc.reference import spec_from_config
from sprintc.routing import plan_route, sample_ids
from sprintc.spec import RoutePass

from conftest import CONFORMANCE
from reference_sit import RefSiT

FIX = CONFORMANCE / "sprint_official_tiny"


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def fixture():
    cfg = json.loads(FIX.with_suffix(".json").read_text())["config"]
    io = load_file(str(FIX.with_suffix(".io.safetensors")))
    weights = FIX.with_suffix(".weights.safetensors")
    return cfg, io, weights


def test_fixture_dense_masked_pdg(fixture):
    cfg, io, weights = fixture
    model = sprintc.build(spec_from_config(cfg))
    sprintc.load_reference(model, weights)
    model.eval()
    with torch.no_grad():
        assert rel(model(io["x"], io["t"], io["y"]), io["out_dense"]) < 1e-5
        assert rel(model(io["x"], io["t"], io["y"], ids_keep=io["ids_keep_0"]), io["out_masked_0"]) < 1e-5
        assert rel(model.forward_guidance(io["pdg_x"], io["pdg_t"], io["pdg_y"]), io["out_pdg"]) < 1e-5


def test_transcription_matches_fixture(fixture):
    """The independent transcription is right, so it may stand in for the reference below."""
    cfg, io, weights = fixture
    ref = RefSiT(**cfg)
    ref.load_state_dict(load_file(str(weights)))
    with torch.no_grad():
        assert rel(ref(io["x"], io["t"], io["y"]), io["out_dense"]) < 1e-5
        assert rel(ref(io["x"], io["t"], io["y"], ids_keep=io["ids_keep_0"]), io["out_masked_0"]) < 1e-5
        assert rel(ref(io["pdg_x"], io["pdg_t"], io["pdg_y"], pdg=True), io["out_pdg"]) < 1e-5


def test_routed_output_independent_of_ids_order(fixture):
    cfg, io, weights = fixture
    model = sprintc.load_reference(sprintc.build(spec_from_config(cfg)), weights).eval()
    ids = io["ids_keep_0"]
    shuffled = torch.stack([row[torch.randperm(len(row))] for row in ids])
    with torch.no_grad():
        a = model(io["x"], io["t"], io["y"], ids_keep=ids)
        b = model(io["x"], io["t"], io["y"], ids_keep=shuffled)
    assert torch.allclose(a, b, atol=1e-6)


configs = st.fixed_dictionaries({
    "heads": st.sampled_from([2, 4]),
    "head_dim": st.sampled_from([8, 16]),
    "encoder_depth": st.integers(0, 2),
    "middle_depth": st.integers(1, 3),
    "decoder_depth": st.integers(0, 2),
    "grid": st.sampled_from([4, 6, 8]),
    "patch_size": st.sampled_from([1, 2]),
    "in_channels": st.sampled_from([1, 3, 4]),
    "mask_ratio": st.sampled_from([0.5, 0.75]),
    "seed": st.integers(0, 2**16),
})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_any_reference_config(c):
    cfg = {"patch_size": c["patch_size"], "in_channels": c["in_channels"], "q_norm": "RMSNorm",
           "context_size": c["grid"] * c["patch_size"], "hidden_size": c["heads"] * c["head_dim"],
           "num_heads": c["heads"], "encoder_depth": c["encoder_depth"], "middle_depth": c["middle_depth"],
           "decoder_depth": c["decoder_depth"], "num_classes": 7, "mask_ratio": c["mask_ratio"]}
    torch.manual_seed(c["seed"])
    ref = RefSiT(**cfg).eval()
    model = sprintc.load_reference(sprintc.build(spec_from_config(cfg)), ref.state_dict()).eval()
    B = 3
    x = torch.randn(B, cfg["in_channels"], cfg["context_size"], cfg["context_size"])
    t, y = torch.rand(B), torch.randint(0, 8, (B,))
    plan = plan_route(RoutePass(name="route", drop=c["mask_ratio"]), (c["grid"], c["grid"]))
    ids = sample_ids(plan, B, generator=torch.Generator().manual_seed(c["seed"]))
    x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 7)])
    with torch.no_grad():
        assert rel(model(x, t, y), ref(x, t, y)) < 1e-5
        assert rel(model(x, t, y, ids_keep=ids), ref(x, t, y, ids_keep=ids)) < 1e-5
        assert rel(model.forward_guidance(x2, t2, y2), ref(x2, t2, y2, pdg=True)) < 1e-5


def test_reference_checkpoint_mismatch_lists_every_key(fixture, tmp_path):
    cfg, _, weights = fixture
    state = load_file(str(weights))
    state.pop("mask_token")
    state.pop("final_layer.linear.bias")
    state["extra.weight"] = torch.zeros(1)
    state["x_embedder.proj.weight"] = torch.zeros(3, 3)
    model = sprintc.build(spec_from_config(cfg))
    with pytest.raises(CheckpointError) as e:
        sprintc.load_reference(model, state)
    msg = str(e.value)
    for key in ("sprint.mask_token", "final_layer.linear.bias", "extra.weight", "x_embedder.proj.weight"):
        assert key in msg
    assert "missing keys (2)" in msg and "unexpected keys (1)" in msg and "mis-shaped keys (1)" in msg


def test_corrupt_reference_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    model = sprintc.build(spec_from_config(json.loads(FIX.with_suffix(".json").read_text())["config"]))
    with pytest.raises(CheckpointError, match="cannot read"):
        sprintc.load_reference(model, bad)
    with pytest.raises(CheckpointError, match="not found"):
        sprintc.load_reference(model, tmp_path / "missing.safetensors")


def test_reference_split_must_match_the_partition(fixture):
    cfg, _, weights = fixture
    other = dict(cfg, encoder_depth=2, middle_depth=1, decoder_depth=1)
    with pytest.raises(CheckpointError, match=r"splits its blocks 1/2/1 .* partitioned 2/1/1"):
        sprintc.load_reference(sprintc.build(spec_from_config(other)), weights)
