"""The spec: a pydantic v2 schema for a model, its passes, its target and its recipes.

YAML in, a fully resolved `Spec` out. `extends:` merges another spec underneath (mappings merge key by
key, recursively; lists and scalars are replaced whole; `passes:` is replaced whole). Every error names
file:line:col, the key path, what was found and what is allowed.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sprintc.errors import SpecError

SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


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
        if self.width % self.heads:
            raise ValueError(f"heads: width {self.width} is not divisible by {self.heads} heads")
        if self.pos == "rope" and (self.width // self.heads) % 4:
            raise ValueError(f"pos: RoPE needs a head dim divisible by 4 (2 axes x pairs); width {self.width} / {self.heads} heads = {self.width // self.heads}")
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


class PDGPass(Strict):
    name: Literal["pdg"]


PassSpec = Annotated[Union[PartitionPass, RoutePass, FusePass, PathDropPass, PDGPass], Field(discriminator="name")]


# ----------------------------------------------------------------------------------------- target
class TargetSpec(Strict):
    name: Literal["eager", "inductor", "aot"] = "inductor"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    regional: bool = Field(True, description="compile each distinct block once instead of the whole model")
    cuda_graphs: bool = Field(True, description="capture the fixed-shape sampling step in CUDA graphs")


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


class TrainSpec(Strict):
    objective: Literal["flow", "ddpm"] = "flow"
    time_sampling: Literal["lognormal", "uniform"] = "lognormal"
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec(name="pretrain", steps=1000, batch=64)])
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0)
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
    name: str = "model"
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
        part, route = self.get_pass("partition"), self.get_pass("route")
        m = self.model
        names = [p.name for p in self.passes]
        for n in set(names):
            if names.count(n) > 1:
                raise ValueError(f"passes: pass {n!r} is listed {names.count(n)} times; list each pass once")
        if part and part.middle is not None:
            start, stop = part.middle
            if not 0 <= start < stop <= m.depth:
                raise ValueError(f"passes.partition.middle: blocks [{start}, {stop}) are outside the model, which has blocks 0..{m.depth - 1}")
        elif part and part.encoder + part.decoder >= m.depth:
            raise ValueError(f"passes.partition: encoder {part.encoder} + decoder {part.decoder} blocks leave no middle block in a model of depth {m.depth}")
        if route:
            from sprintc.routing import plan_route  # local: routing imports torch

            plan_route(route, m.grid)  # raises ValueError naming the ratios the grid allows
        if (self.get_pass("pdg") or self.sample.guidance != "none") and m.num_classes == 0 and self.passes:
            pass  # guidance on an unconditional model is rejected where it is asked for (sample)
        lo, hi = self.sample.interval
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"sample.interval: [{lo}, {hi}] must satisfy 0 <= low <= high <= 1")
        return self


# ----------------------------------------------------------------------------------------- loading
class _Loc(dict):
    """A YAML mapping that remembers where each key and value was written."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.key_marks: dict[str, Any] = {}
        self.value_marks: dict[str, Any] = {}
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
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise SpecError(f"{_where(loader.name, knode.start_mark)}: mapping keys must be plain words, found {type(key).__name__}")
        key = str(key)
        if key in out:
            raise SpecError(f"{_where(loader.name, knode.start_mark)} {key}: duplicate key")
        out[key] = loader.construct_object(vnode, deep=True)
        out.key_marks[key] = knode.start_mark
        out.value_marks[key] = vnode.start_mark
    return out


def _construct_sequence(loader, node):
    out = _LocList(loader.construct_object(v, deep=True) for v in node.value)
    out.item_marks = [v.start_mark for v in node.value]
    out.mark = node.start_mark
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _where(name, mark) -> str:
    return f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(name)


def _read_yaml(path: Path) -> _Loc:
    shown = _display(path)
    if not path.exists():
        raise SpecError(f"{shown}: spec file not found")
    if path.is_dir():
        raise SpecError(f"{shown}: is a directory, expected a YAML spec file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{shown}: not a text file (byte {e.start} is not UTF-8); a spec is YAML text") from None
    if "\x00" in text:
        raise SpecError(f"{shown}: not a text file (contains NUL bytes); a spec is YAML text")
    loader = _Loader(text)
    loader.name = shown
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise SpecError(f"{_where(shown, mark)}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{shown}: YAML error: {e}") from None
    finally:
        loader.dispose()
    if data is None:
        raise SpecError(f"{shown}: the spec is empty; expected a mapping with keys such as model:, passes:, train:")
    if not isinstance(data, dict):
        raise SpecError(f"{shown}:1:1: the spec must be a mapping (key: value), found {type(data).__name__}")
    return data


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def resolve_spec_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A path, or the name of a bundled preset (`dit_xl` finds specs/dit_xl.yaml)."""
    p = Path(name_or_path)
    if relative_to is not None and not p.is_absolute():
        q = relative_to.parent / p
        if q.exists() or q.with_suffix(".yaml").exists():
            p = q if q.exists() else q.with_suffix(".yaml")
            return p
    if p.exists():
        return p
    for cand in (SPECS_DIR / p.name, SPECS_DIR / f"{p.name}.yaml"):
        if "/" not in str(name_or_path) and cand.is_file():
            return cand
    return p


def _merge(base, over):
    """`over` on top of `base`: mappings merge recursively, everything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = _Loc(base)
        if isinstance(base, _Loc):
            out.key_marks, out.value_marks, out.mark = dict(base.key_marks), dict(base.value_marks), base.mark
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base and k != "passes" else v
            if isinstance(over, _Loc):
                out.key_marks[k], out.value_marks[k] = over.key_marks.get(k), over.value_marks.get(k)
        return out
    return over


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[int, str]]:
    """Read a spec file and everything it extends; returns the merged tree and id(mapping) -> file."""
    real = path.resolve()
    if real in seen:
        chain = " -> ".join(_display(p) for p in (*seen, real))
        raise SpecError(f"{_display(path)}: extends cycle: {chain}")
    data = _read_yaml(path)
    files = {}
    _tag(data, _display(path), files)
    parent = data.get("extends")
    if parent is None:
        return data, files
    if not isinstance(parent, str):
        raise SpecError(f"{_where(_display(path), data.value_marks.get('extends'))} extends: expected a preset name or a path, found {type(parent).__name__}")
    ppath = resolve_spec_path(parent, relative_to=path)
    if not ppath.is_file():
        raise SpecError(f"{_where(_display(path), data.value_marks.get('extends'))} extends: no spec {parent!r} (looked beside the file and among the presets: {', '.join(preset_names())})")
    base, bfiles = _load_tree(ppath, (*seen, real))
    files.update(bfiles)
    merged = _merge(base, data)
    files[id(merged)] = _display(path)
    return merged, files


def _tag(node, fname, files):
    if isinstance(node, dict):
        files[id(node)] = fname
        for v in node.values():
            _tag(v, fname, files)
    elif isinstance(node, list):
        files[id(node)] = fname
        for v in node:
            _tag(v, fname, files)


def _locate(tree, loc: tuple, files, default_file) -> str:
    """file:line:col of the deepest key in `loc` that the YAML tree has."""
    node, where = tree, _where(files.get(id(tree), default_file), getattr(tree, "mark", None))
    for part in loc:
        if isinstance(node, dict) and str(part) in node:
            f = files.get(id(node), default_file)
            where = _where(f, node.key_marks.get(str(part)) if isinstance(node, _Loc) else None)
            node = node[str(part)]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            f = files.get(id(node), default_file)
            where = _where(f, node.item_marks[part] if isinstance(node, _LocList) else None)
            node = node[part]
        else:
            break
    return where


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _validation_message(err: ValidationError, tree, files, default_file) -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        where = _locate(tree, loc, files, default_file)
        key = _fmt_loc(loc)
        msg = e["msg"].removeprefix("Value error, ")
        etype = e["type"]
        if etype == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}; allowed here: {', '.join(_allowed_keys(loc[:-1]))}"
        elif etype == "missing":
            msg = "required key is missing"
        elif "input" in e and etype not in ("value_error", "assertion_error") and not isinstance(e["input"], dict):
            msg = f"found {e['input']!r}: {msg}"
        # cross-field messages start with their own key ("heads: ..."); point at that key
        head = msg.split(":", 1)[0]
        if etype == "value_error" and head.isidentifier() and head not in (loc[-1:] or ()):
            sub = (*loc, *head.split("."))
            where, key = _locate(tree, sub, files, default_file), _fmt_loc(sub)
            msg = msg.split(":", 1)[1].strip()
        lines.append(f"{where} {key or '(top level)'}: {msg}")
    return "\n".join(lines)


_UNION_TAGS = {"partition", "route", "fuse", "path_drop", "pdg"}


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in _UNION_TAGS:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    if loc and loc[-1] in _UNION_TAGS or (len(loc) >= 2 and loc[0] == "passes"):
        tag = loc[-1] if loc[-1] in _UNION_TAGS else None
        cls = {"partition": PartitionPass, "route": RoutePass, "fuse": FusePass, "path_drop": PathDropPass, "pdg": PDGPass}.get(tag)
        if cls:
            return list(cls.model_fields)
    return list(getattr(model, "model_fields", {}))


def _set_override(tree: dict, dotted: str, value):
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {dotted}: {p} is not a mapping")
    node[parts[-1]] = value


def load_spec(source: str | Path | dict | Spec, **overrides) -> Spec:
    """Load a spec from a YAML path, a preset name, a dict, or a Spec; `overrides` use dotted keys
    with `__` for dots (`model__depth=4`) and replace values before validation."""
    if isinstance(source, Spec):
        if not overrides:
            return source
        source = source.model_dump()
    if isinstance(source, dict):
        tree, files, shown = copy.deepcopy(source), {}, "<dict>"
        parent = tree.get("extends")
        if isinstance(parent, str):
            ppath = resolve_spec_path(parent)
            if not ppath.is_file():
                raise SpecError(f"<dict> extends: no spec {parent!r}; presets: {', '.join(preset_names())}")
            base, files = _load_tree(ppath)
            tree = _merge(base, tree)
    else:
        path = resolve_spec_path(source)
        shown = _display(path)
        tree, files = _load_tree(path)
    for k, v in overrides.items():
        _set_override(tree, k.replace("__", "."), v)
    try:
        return Spec.model_validate(_plain(tree))
    except ValidationError as e:
        raise SpecError(_validation_message(e, tree, files, shown)) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in SPECS_DIR.glob("*.yaml"))


def dump_spec(spec: Spec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json", exclude={"extends"}), sort_keys=False)


def json_schema() -> dict:
    return Spec.model_json_schema()
