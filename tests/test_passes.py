"""The SPRINT passes: equivalences, composition, the verifier, and bad input."""
import re

import pytest
import torch
import torch.fx as fx

import sprintc
from sprintc import routing
from sprintc.compiler import compile_spec
from sprintc.errors import PassError, SpecError
from sprintc.pipeline import verify

from conftest import tiny_spec


def inputs(b=3, c=4, s=8, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.rand(b, generator=g), torch.randint(0, classes, (b,), generator=g)


def dense_and_rewritten(passes, **model_over):
    dense = sprintc.build(tiny_spec(passes=[], **model_over))
    rewritten = sprintc.build(tiny_spec(passes=passes, **model_over))
    missing, unexpected = rewritten.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("sprint.") for k in missing)
    return dense.eval(), rewritten.eval()


IDENTITY = [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "drop": 0.0},
            {"name": "fuse", "kind": "concat_linear", "init": "identity"}, {"name": "pdg"}]


def test_drop0_identity_fusion_equals_dense():
    dense, sprint = dense_and_rewritten(IDENTITY)
    for p in dense.parameters():  # non-trivial weights (DiT zero-inits adaLN and the head)
        torch.nn.init.normal_(p, std=0.2)
    sprint.load_state_dict(dense.state_dict(), strict=False)
    x, t, y = inputs()
    with torch.no_grad():
        ref = dense(x, t, y)
        assert (sprint(x, t, y) - ref).abs().max() <= 1e-6
        sprint.train()  # drop 0: training mode routes nothing either
        assert (sprint(x, t, y) - ref).abs().max() <= 1e-6
        # keeping every token in any order is still the dense model
        g = torch.Generator().manual_seed(0)
        perm = torch.stack([torch.randperm(16, generator=g) for _ in range(3)])
        # another token order sums attention in another order: float32 rounding of outputs up to ~20
        assert (sprint(x, t, y, ids_keep=perm) - ref).abs().max() <= 1e-6 * ref.abs().max() * 4


def test_routing_changes_output_and_is_seedable():
    model = sprintc.build(tiny_spec()).train()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t, y = inputs()
    with torch.no_grad():
        model.sprint.generator = torch.Generator().manual_seed(5)
        a = model(x, t, y)
        model.sprint.generator = torch.Generator().manual_seed(5)
        b = model(x, t, y)
        c = model(x, t, y)
        model.eval()
        d = model(x, t, y)
    assert torch.equal(a, b) and not torch.equal(b, c) and not torch.equal(a, d)


def test_path_drop_always_equals_pdg_uncond_half():
    spec = tiny_spec()
    spec["passes"][3]["p"] = 1.0
    model = sprintc.build(spec)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t, y = inputs()
    null = torch.full_like(y, 10)
    with torch.no_grad():
        model.train()
        dropped = model(x, t, null)  # p = 1: every sample takes the shallow path
        model.eval()
        guided = model.forward_guidance(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        assert torch.allclose(guided[3:], dropped, rtol=1e-5, atol=1e-4)
        assert torch.allclose(guided[:3], model(x, t, y), rtol=1e-5, atol=1e-4)


def test_path_drop_draw_keeps_each_sample_at_p():
    g = torch.Generator().manual_seed(0)
    batch, p, n = 10, 0.25, 4000  # k = 2 skip the middle, a third is dropped half the time
    counts, rate = set(), torch.zeros(batch)
    for _ in range(n):
        dropped, rows = routing.draw_path_drop(p, batch, generator=g)
        rows = rows[0]
        assert rows.shape == (8,) and torch.equal(rows, rows.sort().values)
        skipped = torch.ones(batch, dtype=torch.bool)
        skipped[rows] = False
        assert dropped[skipped].all()  # whoever skips the middle is dropped
        counts.add(int(dropped.sum()))
        rate += dropped
    assert counts == {2, 3}
    assert ((rate / n - p).abs() < 0.03).all()  # each sample's chance is p (binomial sd 0.007)
    dropped, rows = routing.draw_path_drop(0.1, 32, generator=g, groups=4)  # per rank: 8 samples, none skip
    assert rows is None and dropped.shape == (32,)
    dropped, rows = routing.draw_path_drop(0.25, 32, generator=g, groups=4)  # per rank: 2 of 8 skip
    assert rows.shape == (4, 6) and all(dropped.view(4, 8).sum(1) >= 2)
    independent = {int(routing.draw_path_drop(0.25, 10, skip=False, generator=g)[0].sum()) for _ in range(200)}
    assert len(independent) > 3 and routing.draw_path_drop(0.25, 10, skip=False, generator=g)[1] is None


def test_skipping_the_middle_changes_nothing_but_work():
    """The samples left out of middle_rows give the output and gradients they give when the middle runs on them and
    path drop replaces its output."""
    skip = sprintc.build(tiny_spec()).train()
    spec = tiny_spec()
    spec["passes"][3]["skip_middle"] = False
    full = sprintc.build(spec).train()
    for p in skip.parameters():
        torch.nn.init.normal_(p, std=0.2)
    full.load_state_dict(skip.state_dict())
    x, t, y = inputs(b=5)
    ids = routing.sample_ids(skip.sprint.plan, 5)
    dropped = torch.tensor([True, False, True, False, True])
    rows = torch.tensor([1, 3, 4])  # sample 4 runs the middle and is dropped by the mask alone
    torch.manual_seed(0)  # the same label dropout in both
    a = skip(x, t, y, ids_keep=ids, path_drop=dropped, middle_rows=rows)
    torch.manual_seed(0)
    b = full(x, t, y, ids_keep=ids, path_drop=dropped)
    assert (a - b).abs().max() <= 1e-5
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, pa), pb in zip(skip.named_parameters(), full.parameters()):
        assert (pa.grad - pb.grad).abs().max() <= 1e-4 * max(1.0, pb.grad.abs().max()), name
    # the phase with all tokens (no ids_keep): the middle's inputs shared by the batch (RoPE angles) stay whole
    dense = []
    for model, kwargs in ((skip, {"middle_rows": rows}), (full, {})):
        torch.manual_seed(1)
        dense.append(model(x, t, y, path_drop=dropped, **kwargs))
    assert (dense[0] - dense[1]).abs().max() <= 1e-5
    with pytest.raises(TypeError, match="skip_middle: false"):
        full(x, t, y, ids_keep=ids, path_drop=dropped, middle_rows=rows)
    with pytest.raises(ValueError, match="middle_rows needs path_drop"):
        skip.eval()(x, t, y, middle_rows=rows)


def test_pass_order_in_spec_does_not_matter():
    a = compile_spec(tiny_spec()).graph_module.code
    b = compile_spec(tiny_spec(passes=list(reversed(tiny_spec()["passes"])))).graph_module.code
    assert a == b


def test_graph_is_readable_and_blocks_are_leaves():
    built = compile_spec(tiny_spec())
    code = built.graph_module.code
    assert code.count("self.blocks") == 4 and "gather_tokens" in code and "scatter_tokens" in code
    assert [h[0] for h in built.history] == ["trace", "partition", "route", "fuse", "path_drop", "pdg"] or \
        [h[0] for h in built.history] == ["trace", "partition", "route", "path_drop", "fuse", "pdg"]


def test_rope_angles_are_gathered_with_tokens():
    code = compile_spec(tiny_spec()).graph_module.code
    # the angles by the kept ids of the rows the middle runs on; the stream's kept tokens cut to those rows
    ids = re.search(r"gather_tokens\(rope, (\w+), 0\)", code).group(1)
    assert f"{ids} = sprintc_routing_select_rows(ids_keep, middle_rows)" in code
    stream = re.search(r"(\w+) = sprintc_routing_gather_tokens\(blocks_0, ids_keep\)", code).group(1)
    assert f"sprintc_routing_select_rows({stream}, middle_rows)" in code
    assert re.search(rf"sprintc_routing_scatter_tokens\(\w+, {ids}, ", code)  # the same rows' kept ids


def test_tread_and_dense_presets_compose():
    x, t, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 2])
    tread = sprintc.build("tread_digits").train()
    assert tread.sprint.plan.keep == 32 and tread.sprint.plan.sampler == "random"
    assert tread(x, t, y).shape == (2, 1, 16, 16)
    dense = sprintc.build("digits")
    assert not hasattr(dense, "sprint") and dense(x, t, y).shape == (2, 1, 16, 16)


def test_verifier_catches_an_unclosed_routed_region():
    built = compile_spec(tiny_spec())
    gm = built.graph_module
    scatter = next(n for n in gm.graph.nodes if n.target is routing.scatter_tokens)
    scatter.replace_all_uses_with(scatter.args[0])
    gm.graph.erase_node(scatter)
    gm.recompile()
    with pytest.raises(PassError, match="not closed|output shape"):
        verify(gm, built.ctx, (2, 4, 8, 8), "test")


def test_missing_requirement_is_named():
    with pytest.raises(PassError, match="route requires the partition pass"):
        compile_spec(tiny_spec(passes=[{"name": "route", "drop": 0.5}]))


def test_pdg_without_null_class():
    spec = tiny_spec()
    spec["model"]["num_classes"] = 0
    with pytest.raises((PassError, SpecError), match="null class"):
        compile_spec(spec)


def test_partition_out_of_range_and_no_middle():
    spec = tiny_spec()
    spec["passes"][0] = {"name": "partition", "middle": [1, 9]}
    with pytest.raises(SpecError, match=r"passes\[0\]\.middle: blocks \[1, 9\).*blocks 0\.\.3"):
        sprintc.load_spec(spec)
    spec["passes"][0] = {"name": "partition", "encoder": 2, "decoder": 2}
    with pytest.raises(SpecError, match="leave no middle block"):
        sprintc.load_spec(spec)


def test_partition_by_index_range():
    spec = tiny_spec()
    spec["passes"][0] = {"name": "partition", "middle": [1, 3]}
    built = compile_spec(spec)
    stages = [n.meta.get("stage") for n in built.graph_module.graph.nodes if n.op == "call_module" and n.target.startswith("blocks")]
    assert stages == ["encoder", "middle", "middle", "decoder"]


def test_unrealisable_structured_drop_lists_ratios():
    spec = tiny_spec()
    spec["passes"][1]["drop"] = 0.7
    with pytest.raises(SpecError, match=r"ratios it allows: 0\.0625 \(group 4, keep 15\).* 0\.25 \(group 2, keep 3\), 0\.3125.* 0\.75 \(group 2, keep 1\), 0\.8125"):
        sprintc.load_spec(spec)


def test_guidance_graph_runs_middle_on_half_batch():
    built = compile_spec(tiny_spec())
    gg = fx.GraphModule(built.graph_module, built.ctx.guidance)
    assert "first_half" in gg.code and "cat_mask_half" in gg.code
