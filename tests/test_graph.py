"""The block graph: FLOP counts against the DiT paper and a closed form, readable code, networkx view."""
import networkx as nx
import pytest
import torch

from conftest import tiny_spec
from sprintc.compiler import compile_spec
from sprintc.graph import run_meta, to_dot, to_networkx
from sprintc.report import stage_table


@pytest.fixture(scope="module")
def xl():
    return compile_spec("dit_xl", device="meta")  # shapes and FLOPs only: no 675M weights allocated


def test_dit_xl_forward_is_118_6_gmacs(xl):
    args, kwargs = xl.ctx.inputs(xl.graph_module, 1)
    costs = run_meta(xl.graph_module, *args, **kwargs).costs
    gmacs = sum(c.flops for c in costs.values()) / 2 / 1e9  # flops = 2 x MACs
    assert gmacs == pytest.approx(118.6, rel=0.01)  # DiT-XL/2 in the DiT paper (Peebles & Xie, Table 4)
    params = sum(p.numel() for p in xl.model.parameters())
    assert params == pytest.approx(675e6, rel=0.01)
    assert next(xl.model.parameters()).device.type == "meta"


def test_block_flops_match_closed_form():
    """One adaLN-Zero block on N tokens of width D: qkv, proj, MLP (4x) = 12 N D^2 MACs, attention scores and
    values 2 N^2 D, adaLN modulation 6 D^2 (per sample); counted by the graph, not by this formula."""
    built = compile_spec(tiny_spec(passes=[]), device="meta")
    m = built.spec.model
    n, d = m.tokens, m.width
    args, kwargs = built.ctx.inputs(built.graph_module, 3)
    costs = run_meta(built.graph_module, *args, **kwargs).costs
    per_block = 2 * (12 * n * d * d + 2 * n * n * d + 6 * d * d)
    for i in range(m.depth):
        assert costs[f"blocks_{i}"].flops == 3 * per_block
        assert costs[f"blocks_{i}"].params == sum(p.numel() for p in built.model.blocks[i].parameters())


def test_graph_code_is_readable(xl):
    code = xl.graph_module.code
    for i in range(28):  # every block is one call
        assert code.count(f'getattr(self.blocks, "{i}")(') == 1
    assert "scaled_dot_product_attention" not in code and "linear" not in code and "layer_norm" not in code
    assert len([ln for ln in code.splitlines() if ln.strip()]) < 45


def test_networkx_view_has_the_block_chain(xl):
    g = to_networkx(xl.graph_module.graph)
    chain = [f"blocks_{i}" for i in range(28)]
    assert all(g.has_edge(a, b) for a, b in zip(chain, chain[1:]))
    assert nx.is_directed_acyclic_graph(g)
    assert nx.has_path(g, "x", "blocks_0") and nx.has_path(g, "blocks_27", "output")
    assert g.nodes["blocks_3"]["op"] == "call_module" and g.nodes["blocks_3"]["target"] == "blocks.3"


def test_partition_marks_stages_and_routing_cuts_middle_flops():
    built = compile_spec(tiny_spec(), device="meta")  # 1 / 2 / 1 blocks, 75% of 16 tokens dropped
    g = to_networkx(built.graph_module.graph)
    assert [g.nodes[f"blocks_{i}"]["stage"] for i in range(4)] == ["encoder", "middle", "middle", "decoder"]
    rows = {r["stage"]: r for r in stage_table(built.graph_module, built.ctx)}
    assert [rows[s]["tokens"] for s in ("encoder", "encoder->middle", "middle", "middle->decoder", "decoder")] == [16, 4, 4, 16, 16]
    assert rows["middle"]["blocks"] == 2 and rows["middle"]["ops"] == "blocks.1-2"
    d, n, m = 64, 16, 4
    block = lambda t: 2 * (12 * t * d * d + 2 * t * t * d + 6 * d * d)  # noqa: E731
    assert rows["encoder"]["forward_gflops"] * 1e9 == pytest.approx(block(n))
    assert rows["middle"]["forward_gflops"] * 1e9 == pytest.approx(2 * block(m))
    dot = to_dot(built.graph_module.graph)
    assert dot.startswith("digraph G {") and '"blocks_1" [label="blocks_1\\nblocks.1\\n(1, 4, 64)", fillcolor=orange]' in dot


def test_meta_build_does_not_touch_real_weights():
    real = compile_spec(tiny_spec())
    before = {k: v.clone() for k, v in real.model.state_dict().items()}
    args, kwargs = real.ctx.inputs(real.graph_module, 2)
    run_meta(real.graph_module, *args, **kwargs)
    after = real.model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())
