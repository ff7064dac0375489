"""The build report: what a spec builds to, stage by stage, with FLOPs measured from the graph.

Every figure comes from running the (rewritten) block graph on meta tensors (`graph.run_meta`: no
compute, no memory; FlopCounterMode counts matmuls and attention, flops = 2 x MACs). Nothing here is a
closed-form formula, so the report stays true for whatever the passes made of the graph.
"""
from __future__ import annotations

import torch.fx as fx

from sprintc.graph import run_meta

G = 1e9


def _is_block(n: fx.Node, prefix: str) -> bool:
    return n.op == "call_module" and n.target.rsplit(".", 1)[0] == prefix and n.target.rsplit(".", 1)[-1].isdigit()


def _op_name(n: fx.Node) -> str:
    return n.target if n.op == "call_module" else getattr(n.target, "__name__", str(n.target))


def _rows(gm: fx.GraphModule, prefix: str) -> dict[str, list[fx.Node]]:
    """Group the graph's nodes into stages, in order: embed, the block stages (encoder / middle / decoder
    as partition marked them, else `blocks`), the glue between two block stages (`encoder->middle`:
    the route's gathers; `middle->decoder`: scatter, path drop, fusion), and head. A node without
    inputs (a parameter read such as the mask token) goes with its first user."""
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    pos = {n: i for i, n in enumerate(nodes)}
    blocks = [n for n in nodes if _is_block(n, prefix)]
    stage_of = {b: b.meta.get("stage") or "blocks" for b in blocks}

    def label(n):
        if n in stage_of:
            return stage_of[n]
        before = [b for b in blocks if pos[b] < pos[n]]
        after = [b for b in blocks if pos[b] > pos[n]]
        if not before:
            return "embed"
        if not after:
            return "head"
        a, b = stage_of[before[-1]], stage_of[after[0]]
        return a if a == b else f"{a}->{b}"

    rows: dict[str, list[fx.Node]] = {}
    for n in nodes:
        users = [u for u in n.users if u.op != "output"]
        owner = min(users, key=pos.get) if not n.all_input_nodes and users else n
        rows.setdefault(label(owner), []).append(n)
    order = ["embed", "blocks", "encoder", "encoder->middle", "middle", "middle->decoder", "decoder", "head"]
    return dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _params_by_node(gm: fx.GraphModule) -> dict[str, int]:
    """Each parameter counted once, for the most specific module call that owns it (`sprint.fuse`
    before `sprint`)."""
    calls = sorted((n for n in gm.graph.nodes if n.op == "call_module"), key=lambda n: -n.target.count("."))
    seen, out = set(), {}
    for n in calls:
        total = 0
        for p in gm.get_submodule(n.target).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
        out[n.name] = total
    return out


def _tokens(nodes, shapes) -> int | None:
    for n in reversed(nodes):  # the last token stream (B, N, D) the stage produces
        s = shapes.get(n.name)
        if isinstance(s, tuple) and len(s) == 3 and all(isinstance(d, int) for d in s):
            return s[1]
    return None


def _flops(gm: fx.GraphModule, args, kwargs) -> float:
    return sum(c.flops for c in run_meta(gm, *args, **kwargs).costs.values())


def stage_table(gm: fx.GraphModule, ctx, batch: int = 1) -> list[dict]:
    """One row per stage of the training forward (routed when the spec routes)."""
    args, kwargs = ctx.inputs(gm, batch)
    interp = run_meta(gm, *args, **kwargs)
    params = _params_by_node(gm)
    out = []
    for stage, nodes in _rows(gm, ctx.blocks).items():
        blocks = [n for n in nodes if _is_block(n, ctx.blocks)]
        idx = [int(b.target.rsplit(".", 1)[1]) for b in blocks]
        ops = f"{ctx.blocks}.{min(idx)}-{max(idx)}" if idx else ", ".join(dict.fromkeys(_op_name(n) for n in nodes))
        fwd = sum(interp.costs[n.name].flops for n in nodes) / batch / G
        out.append({"stage": stage, "blocks": len(blocks), "ops": ops, "tokens": _tokens(nodes, interp.shapes),
                    "params": sum(params.get(n.name, 0) for n in nodes),
                    "forward_gflops": fwd, "train_gflops": 3 * fwd})
    return out


def build_report(built, batch: int = 1) -> dict:
    """Everything `sprintc build` prints, as plain data (report.json)."""
    spec, gm, ctx, m = built.spec, built.graph_module, built.ctx, built.spec.model
    plan = ctx.plan
    dense_fwd = None
    if plan is not None and plan.kept < plan.tokens:  # the same graph with routing off: all tokens, all blocks
        args, kwargs = ctx.inputs(gm, batch)
        dense_fwd = _flops(gm, args, {**kwargs, "ids_keep": None, "middle_rows": None}) / batch / G
    stages = stage_table(gm, ctx, batch)  # last, so the node shapes (graph.dot) are the routed ones
    routed_fwd = sum(r["forward_gflops"] for r in stages)
    dense_fwd = routed_fwd if dense_fwd is None else dense_fwd
    report = {
        "spec": {
            "name": spec.name, "family": m.family,
            "input": "x".join(map(str, (m.input.channels, *((m.input.frames,) if m.input.frames else ()), m.input.size, m.input.size))),
            "patch": m.patch, "grid": list(m.grid), "tokens": m.tokens, "width": m.width, "depth": m.depth,
            "heads": m.heads, "head_dim": m.width // m.heads, "mlp": m.mlp, "pos": m.pos, "qk_norm": m.qk_norm,
            "num_classes": m.num_classes, "learn_sigma": m.learn_sigma,
            "target": spec.target.model_dump(mode="json"),
        },
        "params": sum(p.numel() for p in built.model.parameters()),
        "stages": stages,
        "total": {"params": sum(r["params"] for r in stages), "forward_gflops": routed_fwd,
                  "forward_gmacs": routed_fwd / 2, "train_gflops": 3 * routed_fwd},
        "passes": [{"name": p.name, "config": p.model_dump(mode="json", exclude={"name"}),
                    "applied": p.name in ctx.applied} for p in spec.passes],
        "route": None if plan is None else {"sampler": plan.sampler, "tokens": plan.tokens, "kept": plan.kept,
                                            "group": list(plan.group), "per_group": plan.per_group},
        "training": {"dense_gflops": 3 * dense_fwd, "routed_gflops": 3 * routed_fwd,
                     "ratio": routed_fwd / dense_fwd, "ideal_speedup": dense_fwd / routed_fwd},
        "sampling": None,
        "path_drop": None,
    }
    if ctx.path_drop_skip and ctx.path_drop_p > 0:  # fewer samples run the middle at a training batch than at batch 1
        b = next((st.batch for st in spec.train.stages if st.routing), None)
        if b:
            args, kwargs = ctx.inputs(gm, b)
            rows = kwargs.get("middle_rows")
            report["path_drop"] = {"batch": b, "skipped": 0 if rows is None else b - len(rows),
                                   "train_gflops": 3 * _flops(gm, args, kwargs) / b / G}
    if m.num_classes:  # guidance needs the null class
        cfg = 2 * dense_fwd  # per image and step: conditional + unconditional dense forwards
        samp = {"cfg_gflops": cfg, "pdg_gflops": None, "ratio": None, "ideal_speedup": None}
        if ctx.guidance is not None:
            gg = fx.GraphModule(gm, ctx.guidance)
            gargs, gkwargs = ctx.inputs(gg, batch, guidance=True)  # a [cond; uncond] batch of 2 x batch
            pdg = _flops(gg, gargs, gkwargs) / batch / G
            samp.update(pdg_gflops=pdg, ratio=pdg / cfg, ideal_speedup=cfg / pdg)
        report["sampling"] = samp
    return report


def _num(x: float) -> str:
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


def _params(n: int) -> str:
    return f"{n / 1e6:,.2f}M" if n >= 1e5 else f"{n:,}"


def print_report(report: dict, console=None):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    s = report["spec"]
    console.print(f"[bold]{escape(s['name'])}[/bold]: {s['family']} on {s['input']} inputs, patch {s['patch']} -> "
                  f"{s['tokens']} tokens ({'x'.join(map(str, s['grid']))}); width {s['width']}, depth {s['depth']}, "
                  f"{s['heads']} heads (dim {s['head_dim']}); mlp {s['mlp']}, pos {s['pos']}, qk norm {s['qk_norm']}; "
                  f"{s['num_classes']} classes{', learn sigma' if s['learn_sigma'] else ''}; "
                  f"{_params(report['params'])} params")
    t = s["target"]
    console.print(f"target: {t['name']} on {t['device']} in {t['dtype']} (`build` does not compile)")

    table = Table(title="stages: training forward, per image" + (" (routed)" if report["training"]["ratio"] < 1 else ""))
    for col in ("stage", "blocks", "tokens", "params", "fwd GFLOPs", "train GFLOPs", "ops"):
        table.add_column(col, justify="left" if col in ("stage", "ops") else "right", overflow="fold")
    for r in report["stages"]:
        table.add_row(r["stage"], str(r["blocks"] or ""), str(r["tokens"] or ""), _params(r["params"]),
                      _num(r["forward_gflops"]), _num(r["train_gflops"]), r["ops"])
    tot = report["total"]
    table.add_row("total", str(sum(r["blocks"] for r in report["stages"])), "", _params(tot["params"]),
                  _num(tot["forward_gflops"]), _num(tot["train_gflops"]), "", style="bold")
    console.print(table)

    if report["passes"]:
        pt = Table(title="passes (in spec order)")
        for col in ("pass", "applied", "config"):
            pt.add_column(col, overflow="fold")
        for p in report["passes"]:
            cfg = ", ".join(f"{k}={v}" for k, v in p["config"].items())
            pt.add_row(p["name"], "yes" if p["applied"] else "[red]no[/red]", escape(cfg))
        console.print(pt)
    else:
        console.print("passes: none (the dense model)")

    tr, sa, r = report["training"], report["sampling"], report["route"]
    routed = r is not None and tr["ratio"] < 1
    ct = Table(title="GFLOPs per image: the ideal speed-up")
    for col in ("", "dense", "rewritten", "ratio", "ideal speed-up"):
        ct.add_column(col, justify="left" if not col else "right")
    if routed:
        ct.add_row("training step", _num(tr["dense_gflops"]), _num(tr["routed_gflops"]), f"{tr['ratio']:.3f}x", f"{tr['ideal_speedup']:.2f}x")
    else:
        ct.add_row("training step", _num(tr["dense_gflops"]), "-", "-", "1x (no routing)")
    if sa is not None and sa["pdg_gflops"] is not None:
        ct.add_row("sampling step", _num(sa["cfg_gflops"]), _num(sa["pdg_gflops"]), f"{sa['ratio']:.3f}x", f"{sa['ideal_speedup']:.2f}x")
    elif sa is not None:
        ct.add_row("sampling step", _num(sa["cfg_gflops"]), "-", "-", "1x (no pdg pass)")
    console.print(ct)
    notes = ["training = 3 x forward"]
    if routed:
        notes.append(f"routed: the middle blocks see {r['kept']} of {r['tokens']} tokens; dense: the same graph with routing off")
    pd = report.get("path_drop")
    if routed and pd:
        notes.append(f"path drop: at the routed stage's batch of {pd['batch']} on one GPU, {pd['skipped']} samples skip "
                     f"the middle blocks each step: {_num(pd['train_gflops'])} training GFLOPs per image")
    if sa is not None:
        notes.append("sampling dense = CFG: a conditional and an unconditional dense forward"
                     + ("; rewritten = PDG: the guidance graph on [cond; uncond], middle blocks on the conditional half only"
                        if sa["pdg_gflops"] is not None else ""))
    console.print("\n".join(notes), style="dim", markup=False)
