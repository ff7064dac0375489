"""Commands about specs: `build` (report + lock file + graph), `validate`, `schema`, `convert`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sprintc.cli import target_name
from sprintc.errors import CheckpointError, SprintcError
from sprintc.spec import TARGETS


# ------------------------------------------------------------------------------------------ build
def add_build_arguments(p):
    p.add_argument("spec", help="a spec file or a preset name (dit_xl, sit_xl_sprint, ...)")
    p.add_argument("--out", metavar="DIR", help="where to write spec.lock.yaml, graph.py, graph.dot, report.json "
                   "(default runs/<spec name>/build)")
    p.add_argument("--dump-after", metavar="PASS", help="also print the graph code after this pass ('trace': before any)")
    p.add_argument("--target", type=target_name, choices=TARGETS, help="override the spec's target (recorded in the lock file)")


def run_build(args) -> int:
    from rich.console import Console

    from sprintc.compiler import compile_spec
    from sprintc.graph import to_dot
    from sprintc.report import build_report, print_report
    from sprintc.spec import dump_spec, load_spec

    spec = load_spec(args.spec, **({"target__name": args.target} if args.target else {}))
    # the report needs shapes and FLOPs only: build on the meta device (no weights allocated)
    built = compile_spec(spec, dump_after=args.dump_after, device="meta")
    report = build_report(built)
    out = Path(args.out) if args.out else Path("runs") / spec.name / "build"
    report["files"] = {k: str(out / k) for k in ("spec.lock.yaml", "graph.py", "graph.dot", "report.json")}
    files = {
        "spec.lock.yaml": f"# {spec.name}: fully resolved by `sprintc build` (defaults filled, extends merged)\n" + dump_spec(spec),
        "graph.py": graph_source(built),
        "graph.dot": to_dot(built.graph_module.graph) + "\n",
        "report.json": json.dumps(report, indent=2) + "\n",
    }
    write_files(out, files)
    console = Console() if sys.stdout.isatty() else Console(width=120)  # pipes: no 80-column wrap
    print_report(report, console)
    console.print(f"wrote {', '.join(report['files'].values())}")
    if spec.target.name == "aot":  # the deployable artefact: the guided sampling step as an AOTInductor package
        from sprintc.targets_api import export_aot

        info = export_aot(compile_spec(spec), out / "model.pt2")
        console.print(f"wrote {info['path']} ({info['bytes'] / 2**20:.1f} MiB; guided step, guidance {info['guidance']}, "
                      f"{info['dtype']} on {info['device']}; {info['total_s']} s)")
    if args.dump_after:
        code = dict(built.history)[args.dump_after]
        console.rule(f"graph after {args.dump_after}")
        print(code.strip("\n"))
        if args.dump_after == "pdg" and built.ctx.guidance is not None:  # pdg's product is the guidance graph
            console.rule("guidance graph (pdg)")
            print(built.ctx.guidance.python_code("self").src.strip("\n").replace("def forward(", "def forward_guidance(", 1))
    return 0


def graph_source(built) -> str:
    """The rewritten graph (and the guidance graph) as one readable, importable Python file."""
    parts = [f'"""Block graph of spec {built.spec.name!r} after passes: {", ".join(built.ctx.applied) or "none"}.\n'
             'Written by `sprintc build`; `self` is the model (sprintc.build(spec)). For reading, not for editing."""']
    graphs = [("forward", built.graph_module.graph)]
    if built.ctx.guidance is not None:
        graphs.append(("forward_guidance", built.ctx.guidance))
    imports, bodies = {}, []
    for name, graph in graphs:
        code = graph.python_code("self")
        for alias, obj in code.globals.items():
            mod, qual = getattr(obj, "__module__", None), getattr(obj, "__name__", None)
            if mod and qual and mod != "builtins" and alias != qual:
                imports[alias] = f"from {mod} import {qual} as {alias}"
            elif isinstance(obj, type(sys)):
                imports[alias] = f"import {obj.__name__} as {alias}" if alias != obj.__name__ else f"import {alias}"
        bodies.append(code.src.strip("\n").replace("def forward(", f"def {name}(", 1))
    return "\n".join([parts[0], "", *sorted(imports.values()), "", "", "\n\n\n".join(bodies), ""])


def write_files(out: Path, files: dict[str, str]):
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
    except OSError as e:
        raise SprintcError(f"--out {out}: cannot write ({e.strerror or e})") from None


# ------------------------------------------------------------------------------------------ validate
def add_validate_arguments(p):
    p.add_argument("spec", help="a spec file or a preset name")


def run_validate(args) -> int:
    from sprintc.spec import dump_spec, load_spec

    sys.stdout.write(dump_spec(load_spec(args.spec)))
    return 0


# ------------------------------------------------------------------------------------------ schema
def add_schema_arguments(p):
    p.add_argument("--out", metavar="FILE", help="write the schema here instead of stdout")


def run_schema(args) -> int:
    from sprintc.spec import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if not args.out:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.out).write_text(text)
    except OSError as e:
        raise SprintcError(f"--out {args.out}: cannot write ({e.strerror or e})") from None
    print(f"wrote {args.out}")
    return 0


# ------------------------------------------------------------------------------------------ convert
def add_convert_arguments(p):
    p.add_argument("reference", help="a reference SPRINT checkpoint (.safetensors, or a .pt with model/ema)")
    p.add_argument("--spec", required=True, help="the spec whose model the checkpoint is for")
    p.add_argument("--out", required=True, metavar="OUT.safetensors", help="sprintc checkpoint to write")


def run_convert(args) -> int:
    from safetensors.torch import save_file

    from sprintc.compiler import compile_spec
    from sprintc.reference import load_reference, read_state
    from sprintc.spec import dump_spec, load_spec

    src, out = Path(args.reference), Path(args.out)
    if out.exists() and out.resolve() == src.resolve():
        raise CheckpointError(f"--out {out}: is the input checkpoint; write the conversion to another file")
    if out.is_dir():
        raise SprintcError(f"--out {out}: is a directory; expected a .safetensors file name")
    spec = load_spec(args.spec)
    state = read_state(src)  # CheckpointError when missing or unreadable
    # the model's layout without initialising weights; every key is then loaded (strict)
    model = compile_spec(spec, device="meta").model.to_empty(device="cpu")
    load_reference(model, state)  # lists every missing, unexpected and mis-shaped key
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # write beside OUT, then rename: a failure never leaves a half-written or clobbered OUT
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={"format": "pt", "sprintc.spec": dump_spec(spec), "sprintc.source": str(src)})
        os.replace(tmp, out)
    except OSError as e:
        raise SprintcError(f"--out {out}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}: {len(tensors)} tensors, {sum(v.numel() for v in tensors.values()):,} values, from {src}")
    return 0
