"""`sprintc` command line. Each command lives in its own module with `add_arguments(parser)` and
`run(args) -> int`; only the chosen one is imported. User errors (SprintcError) print one clear message
and exit with status 2, never a traceback."""
from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys

COMMANDS = {
    "build": ("sprintc.cmd_build", "build a spec: report stages, tokens and FLOPs; write the lock file and graph"),
    "validate": ("sprintc.cmd_build", "check a spec and print it fully resolved"),
    "schema": ("sprintc.cmd_build", "print the JSON Schema of spec files (for editors)"),
    "convert": ("sprintc.cmd_build", "convert a reference SPRINT checkpoint to sprintc's layout"),
    "train": ("sprintc.train", "train a spec: routed pretraining then full-token fine-tuning"),
    "sample": ("sprintc.sample", "sample images from a checkpoint with CFG or path-drop guidance"),
    "eval": ("sprintc.evaluate", "Frechet distance of samples against data"),
    "bench": ("sprintc.bench", "time training and sampling steps: dense vs routed, eager vs compiled"),
}


def target_name(text: str) -> str:
    """argparse type of --target: a device given as the target (`--target cuda`) is told where the device goes."""
    if text in ("cpu", "cuda") or text.startswith("cuda:"):
        from sprintc.spec import TARGETS

        raise argparse.ArgumentTypeError(f"{text!r} is a device, not a target (targets: {', '.join(TARGETS)}); the "
                                         "device is target.device in the spec, or --device of train, sample and bench")
    return text


def main(argv: list[str] | None = None) -> int:
    code = _main(sys.argv[1:] if argv is None else argv)
    if argv is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_without_teardown(code)
    return code


def _leave_without_teardown(code: int):
    """End a torchrun worker process once its work is done and written. The interpreter's teardown after a clean
    gloo run could abort it ("terminate called without an active exception", exit -6: 2 of 120 runs of the
    torchrun command in tests/test_distributed.py, torch 2.14.1), which told torchrun and the scheduler that
    training failed."""
    atexit._run_exitfuncs()  # the exit hooks still run (Inductor's compile workers, caches)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sprintc", description="A declarative model compiler for diffusion transformers (SPRINT).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments", getattr(mod, "add_arguments", lambda p: None))(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from sprintc.errors import SprintcError

    mod = importlib.import_module(COMMANDS[args.command][0])
    run = getattr(mod, f"run_{args.command}", getattr(mod, "run", None))
    try:
        return int(run(args) or 0)
    except SprintcError as e:
        print(f"sprintc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sprintc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
