"""The spec: a pydantic v2 schema for a model, its passes, its target and its recipes.

YAML in, a fully resolved `Spec` out. `extends:` merges another spec underneath (mappings merge key by
key, recursively; lists and scalars are replaced whole; `passes:` is replaced whole). Every error names
file:line:col, the key path, what was found and what is allowed.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sprintc.errors import SpecError

# bundled presets: sprintc/specs in an installed wheel, specs/ beside the package in a source checkout
_HERE = Path(__file__).resolve().parent
SPECS_DIR = _HERE / "specs" if (_HERE / "specs").is_dir() else _HERE.parent / "specs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


# ----------------------------------------------------------------------------------------- model
class InputSpec(Strict):
    channels: int = Field(4, ge=1)
    size: int = Field(32, ge=1, description="height = width of the (latent) image")
    frames: int | None = Field(None, ge=1, description="for video DiTs on (T, H, W) latents")


class ModelSpec(Strict):
    family: Literal["dit"] = "dit"
    input: InputSpec = InputSpec()
    patch: int = Field(2, ge=1)
    width: int = Field(1152, ge=8)
    depth: int = Field(28, ge=1)
    heads: int = Field(16, ge=1)
    mlp: Literal["gelu_tanh", "swiglu"] = "gelu_tanh"
    mlp_ratio: float = Field(4.0, gt=0)
    qk_norm: Literal["none", "rms", "layer"] = "none"
    pos: Literal["none", "learned", "sincos", "rope"] = "sincos"
    rope_theta: float = Field(10000.0, gt=0)
    num_classes: int = Field(1000, ge=0, description="0: unconditional; else a null class is added for guidance")
    class_dropout: float = Field(0.1, ge=0, le=1)
    learn_sigma: bool = False

    @property
    def grid(self) -> tuple[int, ...]:
        g = self.input.size // self.patch
        return (g, g) if self.input.frames is None else (self.input.frames, g, g)

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def out_channels(self) -> int:
        return self.input.channels * (2 if self.learn_sigma else 1)

    @model_validator(mode="after")
    def _sizes(self):
        # messages start with the key they are about (relative to `model`): the loader points there
        if self.width % self.heads:
            raise ValueError(f"heads: width {self.width} is not divisible by {self.heads} heads")
        hd, axes = self.width // self.heads, len(self.grid)
        if self.pos == "rope" and axes == 2 and hd % 4:
            raise ValueError(f"pos: 2D RoPE needs a head dim divisible by 4 (a cos/sin pair per axis and frequency); "
                             f"width {self.width} / {self.heads} heads = {hd}")
        if self.pos == "rope" and hd % 2:
            raise ValueError(f"pos: RoPE needs an even head dim; width {self.width} / {self.heads} heads = {hd}")
        if self.input.size % self.patch:
            raise ValueError(f"patch: input size {self.input.size} is not divisible by patch {self.patch}")
        return self


# ----------------------------------------------------------------------------------------- passes
class PartitionPass(Strict):
    name: Literal["partition"]
    encoder: int = Field(2, ge=0, description="dense blocks before the routed middle")
    decoder: int = Field(2, ge=0, description="dense blocks after the routed middle")
    middle: tuple[int, int] | None = Field(None, description="[start, stop) block indices of the middle; overrides encoder/decoder")


class RoutePass(Strict):
    name: Literal["route"]
    sampler: Literal["structured", "random"] = "structured"
    drop: float = Field(0.75, ge=0, lt=1, description="fraction of tokens the middle blocks do not see")
    group: int | None = Field(None, ge=1, description="structured: g for g x g (x g) groups; default: smallest that realises `drop`")
    protected: list[int] = Field(default_factory=list, description="token indices never dropped (class, register, text tokens)")


class FusePass(Strict):
    name: Literal["fuse"]
    kind: Literal["concat_linear", "add", "none"] = "concat_linear"
    init: Literal["xavier", "identity"] = "xavier"


class PathDropPass(Strict):
    name: Literal["path_drop"]
    p: float = Field(0.1, ge=0, le=1)
    # dropped samples skip the middle blocks: floor(p * batch) of them per batch (docs/SPEC.md)
    skip_middle: bool = True


class PDGPass(Strict):
    name: Literal["pdg"]


PassSpec = Annotated[Union[PartitionPass, RoutePass, FusePass, PathDropPass, PDGPass], Field(discriminator="name")]


# ----------------------------------------------------------------------------------------- target
TARGETS = ("eager", "inductor", "aot")  # the lowering targets (targets/), the one list the CLI and the API check against


class TargetSpec(Strict):
    name: Literal[TARGETS] = "inductor"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    regional: bool = Field(True, description="compile each distinct block once instead of the whole model")
    cuda_graphs: bool = Field(True, description="capture fixed-shape steps in CUDA graphs: sampling, and training on one GPU or under DDP")
    tune: bool = Field(False, description="coordinate-descent tuning of Inductor's Triton kernels: a few % faster CUDA steps "
                       "for a first compile of minutes (cached for later runs); the max-autotune modes include it")
    multi_kernel: bool = Field(False, description="Inductor's multi-kernel reductions on CUDA (a persistent and a looped kernel "
                               "per reduction, the faster one picked at the first run): faster steps, but compiled without "
                               "Inductor's FX graph cache, so every process compiles them again; not used with tuning (tune, max-autotune)")
    kernels: bool = Field(True, description="inductor on CUDA: the attention's q/k RMSNorm + RoPE run as sprintc's own "
                          "Triton kernels (sprintc/kernels.py) in training and sampling steps, measured faster than "
                          "Inductor's code for the expression; false: Inductor's code")
    mix_order_reduction: bool = Field(False, description="let Inductor (torch >= 2.10, CUDA) fuse reductions over rows and "
                                      "columns of one tensor into one kernel; off by default: on torch 2.11 it crashed the "
                                      "backward of a parameter broadcast over the batch (pytorch#178080), and from 2.10 to "
                                      "at least 2.14 it computes wrong gradients for scale-shift tables (pytorch#193061)")
    region_blocks: int = Field(2, ge=1, le=64, description="regional inductor: consecutive blocks of one stage compiled "
                               "together as one region of up to this many blocks (one compile per distinct region, shared "
                               "by the others), so that Inductor fuses across their boundaries: 2 measured 1.4% faster than "
                               "1 on an H100 for a 4 s longer cold compile. Applies to models with a block graph (specs "
                               "with passes, sprintc.transform); every block alone under FSDP")
    pdl: bool = Field(True, description="Inductor's programmatic dependent launch (torch's triton.enable_pdl) on GPUs of "
                      "compute capability 9.0 and up (H100): each of its Triton kernels is launched while the kernel before "
                      "it runs and waits inside for the data it reads; no effect on other devices")
    batch_modulation: bool = Field(True, description="regional inductor, models with a block graph: the adaLN "
                                   "modulations of the blocks that read one conditioning run as one matmul before them "
                                   "(eager) instead of one per block inside the regions; one product where their "
                                   "weights lie next to each other, as train.master_weights lays them out "
                                   "(sprintc/modulation.py). Off under FSDP")
    tuned_matmuls: bool = Field(True, description="inductor on CUDA (bf16 / fp16): at compile time each matmul Inductor "
                                "leaves to torch's mm / addmm is timed against cuBLASLt's heuristic candidates, and runs "
                                "on the fastest where it beats torch's call by 3% (sprintc/cublaslt.py); part of the "
                                "compile, cached with the graph")


# ----------------------------------------------------------------------------------------- recipes
class DataSpec(Strict):
    kind: Literal["digits", "latents", "images"] = "digits"
    path: str | None = None


class StageSpec(Strict):
    name: str
    steps: int = Field(ge=1)
    batch: int = Field(ge=1)
    lr: float = Field(1e-4, gt=0)
    warmup: int = Field(0, ge=0)
    routing: bool = Field(True, description="route tokens and drop paths; false = full-token fine-tuning")


class EMASpec(Strict):
    decay: float = Field(0.9999, ge=0, lt=1)
    warmup: int = Field(0, ge=0, description="steps over which the decay ramps up from 0")
    every: int = Field(1, ge=1, description="update the EMA every N steps, with the decays of those N steps multiplied "
                                           "(one pass over the weights instead of N; also at the schedule's last step)")


class TrainSpec(Strict):
    objective: Literal["flow", "ddpm"] = "flow"
    time_sampling: Literal["lognormal", "uniform"] = "lognormal"
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec(name="pretrain", steps=1000, batch=64)])
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)
    master_weights: bool = Field(True, description="bf16 training in one process: keep the matmul weights in bf16, written "
                                                   "by the optimizer from float32 masters, instead of casting them every "
                                                   "step (same numerics, less memory traffic; sprintc/optim.py)")
    moments_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="AdamW's moments with master weights: bfloat16 (opt-in) stores them in bf16, rounded "
                               "stochastically (the arithmetic stays float32): 18 bytes of optimizer traffic per "
                               "weight instead of 26, 4 bytes less memory each; not AdamW's exact numerics")
    ema: EMASpec = EMASpec()
    data: DataSpec = DataSpec()
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    sample_every: int = Field(0, ge=0, description="0: only at the end")
    distributed: Literal["ddp", "fsdp"] = "ddp"
    workers: int = Field(0, ge=0)


class SampleSpec(Strict):
    sampler: Literal["sde", "euler", "heun", "ddpm", "ddim"] = "sde"
    steps: int = Field(250, ge=1)
    guidance: Literal["none", "cfg", "pdg"] = "pdg"
    scale: float = Field(1.0, ge=0)
    interval: tuple[float, float] = (0.0, 1.0)


# ----------------------------------------------------------------------------------------- spec
class Spec(Strict):
    name: str = Field("model", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="names the run folder (runs/<name>)")
    extends: str | None = None
    model: ModelSpec = ModelSpec()
    passes: list[PassSpec] = Field(default_factory=list)
    target: TargetSpec = TargetSpec()
    train: TrainSpec = TrainSpec()
    sample: SampleSpec = SampleSpec()

    def get_pass(self, name: str):
        return next((p for p in self.passes if p.name == name), None)

    @model_validator(mode="after")
    def _cross(self):
        # messages start with the key path they are about (`passes[1].drop`): the loader points there
        m = self.model
        names = [p.name for p in self.passes]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"passes[{i}].name: pass {n!r} is already listed at passes[{names.index(n)}]; list each pass once")
        if "partition" in names:
            i, part = names.index("partition"), self.passes[names.index("partition")]
            if part.middle is not None:
                start, stop = part.middle
                if not 0 <= start < stop <= m.depth:
                    raise ValueError(f"passes[{i}].middle: blocks [{start}, {stop}) are not a non-empty range inside the model's blocks 0..{m.depth - 1}")
            elif part.encoder + part.decoder >= m.depth:
                raise ValueError(f"passes[{i}].encoder: encoder {part.encoder} + decoder {part.decoder} blocks leave no middle block "
                                 f"in a model of depth {m.depth}; encoder + decoder must be at most {m.depth - 1}")
        if "route" in names:
            i, route = names.index("route"), self.passes[names.index("route")]
            grid = "x".join(map(str, m.grid))
            if route.group is not None and any(n % route.group for n in m.grid):
                fits = [g for g in range(1, max(m.grid) + 1) if all(n % g == 0 for n in m.grid)]
                raise ValueError(f"passes[{i}].group: group {route.group} does not divide the {grid} token grid; groups that do: {', '.join(map(str, fits))}")
            from sprintc.routing import plan_route  # local: routing imports torch

            try:
                plan_route(route, m.grid)
            except ValueError as e:  # "drop: ... ratios it allows: ..."
                raise ValueError(f"passes[{i}].{e}") from None
        if "pdg" in names and m.num_classes == 0:
            raise ValueError(f"passes[{names.index('pdg')}].name: pdg guides with the null class, but model.num_classes is 0 (unconditional)")
        lo, hi = self.sample.interval
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"sample.interval: [{lo}, {hi}] must satisfy 0 <= low <= high <= 1")
        return self


# ----------------------------------------------------------------------------------------- loading
# The YAML tree keeps the mark (file, line, column) of every key and list item, so that a validation
# error on `model.heads` can point at the line where `heads:` was written, in whichever file (a spec or
# a preset it extends) wrote it.
MAX_BYTES = 1 << 20     # a spec is a small text file
MAX_VALUES = 100_000    # YAML aliases can expand a small file into a huge tree
MAX_DEPTH = 64


class _Loc(dict):
    """A YAML mapping that remembers where each key was written."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.key_marks: dict[str, Any] = {}
        self.mark = None


class _LocList(list):
    def __init__(self, *a):
        super().__init__(*a)
        self.item_marks: list[Any] = []
        self.mark = None


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    out = _Loc()
    out.mark = node.start_mark
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        if isinstance(key, bool) or not isinstance(key, (str, int, float)):
            raise SpecError(f"{_where(knode.start_mark)}: a key must be a plain word, found {_found(key)}")
        key = str(key)
        if key in out:
            raise SpecError(f"{_where(knode.start_mark)} {key}: duplicate key (first written at {_where(out.key_marks[key])})")
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_marks[key] = knode.start_mark
    return out


def _construct_sequence(loader, node):
    out = _LocList(loader.construct_object(v, deep=True) for v in node.value)
    out.item_marks = [v.start_mark for v in node.value]
    out.mark = node.start_mark
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _where(mark) -> str:
    """file:line:col of a YAML mark (marks carry the file name the loader was given); a value set from
    Python (a dict, an override) has a label instead."""
    return mark if isinstance(mark, str) else f"{mark.name}:{mark.line + 1}:{mark.column + 1}"


def _found(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, ValueError):  # name too long, NUL byte, no permission
        return False


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"{line}:{pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _read_yaml(path: Path) -> _Loc:
    shown = _display(path)
    try:
        if path.is_dir():
            raise SpecError(f"{shown}: is a directory; expected a YAML spec file")
        if not path.is_file():
            raise SpecError(f"{shown}: no such spec file (and no preset of that name; presets: {', '.join(preset_names())})")
        if path.stat().st_size > MAX_BYTES:
            raise SpecError(f"{shown}: {path.stat().st_size} bytes is too large for a spec (at most {MAX_BYTES}); is it a spec file?")
        raw = path.read_bytes()
    except (OSError, ValueError) as e:
        raise SpecError(f"{shown}: cannot read the spec file ({getattr(e, 'strerror', None) or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = _line_col(raw[: e.start].decode("utf-8", "replace"), len(raw[: e.start].decode("utf-8", "replace")))
        raise SpecError(f"{shown}:{at}: not a text file (byte 0x{raw[e.start]:02x} is not UTF-8); a spec is YAML text") from None
    if "\x00" in text:
        raise SpecError(f"{shown}:{_line_col(text, text.index(chr(0)))}: not a text file (NUL byte); a spec is YAML text")
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:  # the reader rejects control characters up front
        raise SpecError(f"{shown}:{_line_col(text, e.position)}: character #x{e.character:04x} is not allowed in YAML; a spec is YAML text") from None
    loader.name = shown  # every mark made from here on carries the file name
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        where = _where(e.problem_mark) if e.problem_mark else shown
        ctx = f" ({e.context} at {e.context_mark.line + 1}:{e.context_mark.column + 1})" if e.context and e.context_mark else ""
        raise SpecError(f"{where}: YAML syntax error: {e.problem}{ctx}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{shown}: YAML error: {e}") from None
    except RecursionError:
        raise SpecError(f"{shown}: YAML nested too deeply") from None
    finally:
        loader.dispose()
    if data is None:
        raise SpecError(f"{shown}:1:1: the spec is empty; expected a mapping with keys such as name:, model:, passes:")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the {type(data).__name__} {_found(data)}"
        raise SpecError(f"{shown}:1:1: the spec must be a mapping (key: value), found {kind}")
    _check_size(data, shown)
    return data


def _check_size(tree, shown):
    count = 0

    def walk(node, depth):
        nonlocal count
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            raise SpecError(f"{shown}: the spec expands to more than {MAX_VALUES} values or {MAX_DEPTH} levels "
                            "(recursive or exponential YAML aliases?)")
        for v in node.values() if isinstance(node, dict) else node if isinstance(node, list) else ():
            walk(v, depth + 1)

    walk(tree, 0)


def resolve_spec_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A path, or the name of a bundled preset (`dit_xl` finds specs/dit_xl.yaml). `extends:` looks
    beside the extending file first (`relative_to`), then among the presets."""
    p = Path(name_or_path)
    if relative_to is not None and not p.is_absolute():
        for q in (relative_to.parent / p, relative_to.parent / f"{p}.yaml"):
            if _is_file(q):
                return q
    if _is_file(p) or p.parent != Path("."):
        return p
    for cand in (SPECS_DIR / p.name, SPECS_DIR / f"{p.name}.yaml"):
        if _is_file(cand):
            return cand
    return p


def _merge(base, over):
    """`over` on top of `base`: mappings merge key by key, recursively; anything else (scalars, lists,
    and so `passes:`) is replaced whole. Marks follow the value that wins."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = _Loc(base)
    out.key_marks = dict(getattr(base, "key_marks", {}))
    out.mark = getattr(over, "mark", None)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if k in base and k != "passes" else v
        out.key_marks[k] = over.key_marks.get(k) if isinstance(over, _Loc) else "<dict>"
    return out


def _load_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """Read a spec file and merge it over everything it extends."""
    data = _read_yaml(path)
    parent = data.get("extends")
    if parent is None:
        return data
    at = f"{_where(data.key_marks['extends'])} extends"
    if not isinstance(parent, str):
        raise SpecError(f"{at}: expected a preset name or a path, found {_found(parent)}")
    ppath = resolve_spec_path(parent, relative_to=path)
    if not _is_file(ppath):
        raise SpecError(f"{at}: no spec {parent!r} beside {_display(path)} and no preset of that name; presets: {', '.join(preset_names())}")
    files = (*chain, path.resolve())
    if ppath.resolve() in files:
        cycle = " -> ".join(_display(p) for p in (*files, ppath.resolve()))
        raise SpecError(f"{at}: cycle: {cycle}")
    return _merge(_load_tree(ppath, files), data)


def _locate(tree, loc: tuple, default: str) -> str:
    """file:line:col of the deepest key of `loc` that the YAML tree has (the whole file if none)."""
    node, where = tree, (_where(tree.mark) if getattr(tree, "mark", None) else default)
    for part in loc:
        if isinstance(node, dict) and str(part) in node:
            mark = getattr(node, "key_marks", {}).get(str(part))
            node = node[str(part)]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            marks = getattr(node, "item_marks", [])
            mark = marks[part] if part < len(marks) else None
            node = node[part]
        else:
            break
        if mark is not None:
            where = _where(mark)
    return where


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _parse_loc(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path))


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


_PASSES = {"partition": PartitionPass, "route": RoutePass, "fuse": FusePass, "path_drop": PathDropPass, "pdg": PDGPass}
_KEYED = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (.*)$", re.S)


def _validation_message(err: ValidationError, tree, default: str) -> str:
    lines = []
    for e in err.errors(include_url=False):
        # pydantic puts the tag of a tagged union in the path (passes.0.route.drop): drop it
        loc = tuple(p for i, p in enumerate(e["loc"]) if not (i >= 2 and e["loc"][i - 2] == "passes" and p in _PASSES))
        msg, etype = e["msg"].removeprefix("Value error, "), e["type"]
        if etype == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; allowed here: {', '.join(_allowed_keys(tree, loc[:-1]))}"
        elif etype == "missing":
            msg = "required key is missing"
        elif etype == "union_tag_invalid" or etype == "union_tag_not_found":
            msg = f"found {_found(e['input'].get('name')) if isinstance(e['input'], dict) else _found(e['input'])}; a pass is a mapping whose `name` is one of: {', '.join(_PASSES)}"
        elif etype == "value_error" and (m := _KEYED.match(msg)):
            loc, msg = (*loc, *_parse_loc(m.group(1))), m.group(2)  # cross-field: the key the message names
        elif "input" in e:
            msg = re.sub(r"a valid dictionary or instance of \w+", "a mapping (key: value)", msg)
            found = "a list" if isinstance(e["input"], list) else "a mapping" if isinstance(e["input"], dict) else _found(e["input"])
            msg = f"found {found}: {msg}"
        lines.append(f"{_locate(tree, loc, default)} {_fmt_loc(loc) or '(top level)'}: {msg}")
    return "\n".join(lines)


def _allowed_keys(tree, loc: tuple) -> list[str]:
    """The keys the schema allows in the mapping at `loc`."""
    model: Any = Spec
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if loc[i - 1] == "passes":  # a pass: its class follows its name
                node = _plain(tree).get("passes", [])
                name = node[part].get("name") if part < len(node) and isinstance(node[part], dict) else None
                model = _PASSES.get(name) if isinstance(name, str) else None
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return list(getattr(model, "model_fields", {}))


def _set_override(tree: dict, key: str, value):
    """Set `model__depth` (= model.depth) in the tree; errors on it then point at the override."""
    node, parts = tree, key.split("__")
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node.get(p, {}), dict):
            raise SpecError(f"override {key}: {'.'.join(parts[:i + 1])} is {_found(node[p])}, not a mapping")
        if p not in node:
            node[p] = _Loc()
        node = node[p]
    node[parts[-1]] = value
    if isinstance(node, _Loc):
        node.key_marks[parts[-1]] = f"override {key}={_found(value)}"


def load_spec(source: str | Path | dict | Spec, **overrides) -> Spec:
    """Load a spec from a YAML path, a preset name, a dict, or a Spec. `overrides` use `__` for dots
    (`model__depth=4` sets model.depth) and replace values after `extends:` merging, before validation."""
    if isinstance(source, Spec):
        if not overrides:
            return source
        source = source.model_dump()
    if isinstance(source, dict):
        tree, shown = copy.deepcopy(source), "<dict>"
        parent = tree.get("extends")
        if parent is not None:
            ppath = resolve_spec_path(parent) if isinstance(parent, (str, Path)) else None
            if ppath is None or not _is_file(ppath):
                raise SpecError(f"<dict> extends: no spec {_found(parent)}; presets: {', '.join(preset_names())}")
            tree = _merge(_load_tree(ppath), tree)
    elif isinstance(source, (str, Path)):
        path = resolve_spec_path(source)
        shown = _display(path)
        tree = _load_tree(path)
    else:
        raise SpecError(f"load_spec: expected a path, a preset name, a dict or a Spec, found {type(source).__name__}")
    for k, v in overrides.items():
        _set_override(tree, k, v)
    try:
        return Spec.model_validate(_plain(tree))
    except ValidationError as e:
        raise SpecError(_validation_message(e, tree, shown)) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def dump_spec(spec: Spec) -> str:
    """The fully resolved spec as YAML (defaults filled, `extends:` merged away)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude={"extends"}), sort_keys=False)


def json_schema() -> dict:
    return {**Spec.model_json_schema(), "$schema": "https://json-schema.org/draft/2020-12/schema", "title": "sprintc spec"}
