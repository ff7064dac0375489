"""Spec loading: presets, `extends:` merging, overrides, and every broken spec in tests/specs_bad/ with the
exact file:line:col, key path and message it must produce."""
import json
import os
import re
import tempfile

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, tiny_spec
from sprintc import cli
from sprintc.errors import SpecError
from sprintc.spec import dump_spec, json_schema, load_spec, preset_names

BAD = "tests/specs_bad"
PRESETS = "digits, digits_sprint, dit_b, dit_l, dit_s, dit_xl, sit_xl, sit_xl_sprint, tread_digits"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # messages show paths relative to the working directory


# file -> the exact message (file:line:col key.path: what was found and what is allowed)
CASES = {
    "unknown_key.yaml": f"{BAD}/unknown_key.yaml:4:3 model.widht: unknown key 'widht'; allowed here: family, input, "
                        "patch, width, depth, heads, mlp, mlp_ratio, qk_norm, pos, rope_theta, num_classes, class_dropout, learn_sigma",
    "wrong_type.yaml": f"{BAD}/wrong_type.yaml:3:3 model.depth: found 'four': Input should be a valid integer, "
                       "unable to parse string as an integer",
    "heads_indivisible.yaml": f"{BAD}/heads_indivisible.yaml:6:3 model.heads: width 1152 is not divisible by 7 heads",
    "patch_indivisible.yaml": f"{BAD}/patch_indivisible.yaml:4:3 model.patch: input size 30 is not divisible by patch 4",
    "rope_odd_head_dim.yaml": f"{BAD}/rope_odd_head_dim.yaml:5:3 model.pos: 2D RoPE needs a head dim divisible by 4 "
                              "(a cos/sin pair per axis and frequency); width 72 / 8 heads = 9",
    "partition_too_deep.yaml": f"{BAD}/partition_too_deep.yaml:5:5 passes[0].encoder: encoder 2 + decoder 2 blocks leave "
                               "no middle block in a model of depth 4; encoder + decoder must be at most 3",
    "ema_every_zero.yaml": f"{BAD}/ema_every_zero.yaml:6:5 train.ema.every: found 0: Input should be greater than or equal to 1",
    "yaml_syntax.yaml": f"{BAD}/yaml_syntax.yaml:5:1: YAML syntax error: expected ',' or ']', but got '<stream end>' "
                        "(while parsing a flow sequence at 3:10)",
    "empty.yaml": f"{BAD}/empty.yaml:1:1: the spec is empty; expected a mapping with keys such as name:, model:, passes:",
    "binary.yaml": f"{BAD}/binary.yaml:1:1: not a text file (byte 0x89 is not UTF-8); a spec is YAML text",
    "cycle_a.yaml": f"{BAD}/cycle_b.yaml:1:1 extends: cycle: {BAD}/cycle_a.yaml -> {BAD}/cycle_b.yaml -> {BAD}/cycle_a.yaml",
    "extends_missing.yaml": f"{BAD}/extends_missing.yaml:1:1 extends: no spec 'dit_xxl' beside {BAD}/extends_missing.yaml "
                            f"and no preset of that name; presets: {PRESETS}",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_spec_message(name, capsys):
    with pytest.raises(SpecError) as e:
        load_spec(f"{BAD}/{name}")
    assert str(e.value) == CASES[name]
    # the CLI prints the same message, exit status 2, no traceback
    assert cli.main(["validate", f"{BAD}/{name}"]) == 2
    err = capsys.readouterr().err
    assert err == f"sprintc validate: error: {CASES[name]}\n"


def test_unrealisable_drop_lists_allowed_ratios():
    with pytest.raises(SpecError) as e:
        load_spec(f"{BAD}/drop_unrealisable.yaml")
    msg = str(e.value)
    assert msg.startswith(f"{BAD}/drop_unrealisable.yaml:5:40 passes[1].drop: a structured sampler cannot drop 0.3 "
                          "of a 4x4 token grid; ratios it allows: ")
    allowed = {float(r) for r in re.findall(r"([\d.]+) \(group \d+, keep \d+\)", msg)}
    assert {0.25, 0.5, 0.75, 0.875} <= allowed and 0.3 not in allowed


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec(f"{BAD}/nope.yaml")
    assert str(e.value) == f"{BAD}/nope.yaml: no such spec file (and no preset of that name; presets: {PRESETS})"
    with pytest.raises(SpecError) as e:
        load_spec(BAD)
    assert str(e.value) == f"{BAD}: is a directory; expected a YAML spec file"
    assert cli.main(["validate", BAD]) == 2


def test_other_file_problems(tmp_path):
    cases = {
        "ctrl.yaml": (b"name: a\nmodel: \x01\n", "2:8: character #x0001 is not allowed in YAML"),
        "nul.yaml": (b"name: a\x00\n", "1:8: not a text file (NUL byte)"),
        "list.yaml": (b"- a\n- b\n", "1:1: the spec must be a mapping (key: value), found a list"),
        "dup.yaml": (b"name: a\nname: b\n", "2:1 name: duplicate key (first written at"),
        "key.yaml": (b"[1, 2]: x\n", "1:1: a key must be a plain word, found [1, 2]"),
        "bomb.yaml": (b"a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                      b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
                      "the spec expands to more than 100000 values"),
        "deep.yaml": (b"a: " + b"[" * 1500 + b"]" * 1500 + b"\n", ""),
    }
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError) as e:
            load_spec(tmp_path / name)
        assert want in str(e.value), (name, str(e.value))


def test_cross_field_errors_from_dicts():
    m = {"input": {"size": 8}, "width": 64, "heads": 4, "depth": 4}
    cases = [
        ({"model": m, "passes": [{"name": "foo"}]},
         "<dict> passes[0]: found 'foo'; a pass is a mapping whose `name` is one of: partition, route, fuse, path_drop, pdg"),
        ({"model": m, "passes": [{"name": "route", "dorp": 0.5}]},
         "<dict> passes[0].dorp: unknown key 'dorp'; allowed here: name, sampler, drop, group, protected"),
        ({"model": m, "passes": [{"name": "route", "drop": 1.5}]}, "<dict> passes[0].drop: found 1.5: Input should be less than 1"),
        ({"model": m, "passes": [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "route", "group": 3}]},
         "<dict> passes[1].group: group 3 does not divide the 4x4 token grid; groups that do: 1, 2, 4"),
        ({"model": {**m, "num_classes": 0}, "passes": [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "pdg"}]},
         "<dict> passes[1].name: pdg guides with the null class, but model.num_classes is 0 (unconditional)"),
        ({"model": m, "passes": [{"name": "partition", "encoder": 1, "decoder": 1}, {"name": "partition"}]},
         "<dict> passes[1].name: pass 'partition' is already listed at passes[0]; list each pass once"),
        ({"model": m, "passes": [{"name": "partition", "middle": [2, 9]}]},
         "<dict> passes[0].middle: blocks [2, 9) are not a non-empty range inside the model's blocks 0..3"),
        ({"name": "a/b"}, "<dict> name: found 'a/b': String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]*$'"),
        ({"sample": {"interval": [0.8, 0.2]}}, "<dict> sample.interval: [0.8, 0.2] must satisfy 0 <= low <= high <= 1"),
        ({"extends": "dit_xl", "model": {"heads": 7}}, "<dict> model.heads: width 1152 is not divisible by 7 heads"),
        ({"extends": "nope"}, f"<dict> extends: no spec 'nope'; presets: {PRESETS}"),
    ]
    for src, want in cases:
        with pytest.raises(SpecError) as e:
            load_spec(src)
        assert str(e.value) == want


def test_presets_load_and_round_trip(tmp_path):
    assert preset_names() == PRESETS.split(", ")
    for name in preset_names():
        spec = load_spec(name)
        assert spec.name == name
        lock = tmp_path / f"{name}.lock.yaml"
        lock.write_text(dump_spec(spec))
        assert load_spec(lock) == spec.model_copy(update={"extends": None})
    ref = load_spec("sit_xl_sprint")
    assert [p.name for p in ref.passes] == ["partition", "route", "fuse", "path_drop", "pdg"]
    assert (ref.model.pos, ref.model.qk_norm, ref.passes[1].drop, ref.passes[0].encoder) == ("rope", "rms", 0.75, 2)


def test_the_like_for_like_bench_spec_is_the_anchor_s_model():
    """scripts/xl_like_anchor.yaml: the anchor's DiT (../shared/bench/anchor_dit.py) as a spec, to compare like with like."""
    s = load_spec("scripts/xl_like_anchor.yaml")
    m, route = s.model, s.passes[1]
    assert (m.width, m.depth, m.heads, m.patch, m.pos, m.qk_norm, m.mlp) == (1152, 28, 16, 2, "sincos", "none", "gelu_tanh")
    assert [p.name for p in s.passes] == ["partition", "route", "fuse", "pdg"]  # no path drop
    assert (s.passes[0].encoder, s.passes[0].decoder, route.sampler, route.drop) == (2, 2, "random", 0.75)
    assert s.train.grad_clip == 0


def test_extends_merge_rules(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\nmodel: {input: {size: 8, channels: 3}, width: 64, heads: 4, depth: 6}\n"
        "passes:\n  - {name: partition, encoder: 1, decoder: 1}\n  - {name: route, drop: 0.5}\n"
        "train: {betas: [0.8, 0.9], stages: [{name: a, steps: 5, batch: 2}, {name: b, steps: 6, batch: 2}]}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nmodel: {input: {size: 16}, depth: 8}\npasses:\n  - {name: partition, encoder: 2, decoder: 2}\n"
        "train: {betas: [0.7, 0.95], stages: [{name: c, steps: 7, batch: 2}]}\n")
    base, child = load_spec(tmp_path / "base.yaml"), load_spec(tmp_path / "child.yaml")
    assert child.name == "base"                                       # unset keys are inherited
    assert (child.model.input.size, child.model.input.channels) == (16, 3)  # mappings merge recursively
    assert (child.model.width, child.model.depth) == (64, 8)
    assert [p.name for p in child.passes] == ["partition"] and child.passes[0].encoder == 2  # passes: replaced whole
    assert child.train.betas == (0.7, 0.95) and [s.name for s in child.train.stages] == ["c"]  # lists: replaced whole
    assert len(base.passes) == 2 and base.model.depth == 6
    assert child.extends == "base.yaml"
    # an error in a key the base wrote points into the base file
    (tmp_path / "bad.yaml").write_text("extends: base.yaml\nmodel: {heads: 5}\n")
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "bad.yaml")
    assert str(e.value) == f"{tmp_path / 'bad.yaml'}:2:9 model.heads: width 64 is not divisible by 5 heads"
    (tmp_path / "bad2.yaml").write_text("extends: base.yaml\nmodel: {depth: 2}\n")
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "bad2.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'base.yaml'}:4:23 passes[0].encoder: encoder 1 + decoder 1 blocks leave no middle block")


def test_overrides():
    spec = load_spec("sit_xl_sprint", model__depth=6, model__input__size=16, name="small")
    assert (spec.model.depth, spec.model.input.size, spec.name) == (6, 16, "small")
    assert spec.model.width == 1152 and spec.passes[0].encoder == 2
    assert load_spec(tiny_spec(), model__width=128).model.width == 128
    assert load_spec(spec, model__depth=5).model.depth == 5  # a Spec with overrides
    assert load_spec(spec) is spec
    with pytest.raises(SpecError) as e:
        load_spec("dit_xl", model__depth="x")
    assert str(e.value) == ("override model__depth='x' model.depth: found 'x': Input should be a valid integer, "
                            "unable to parse string as an integer")
    with pytest.raises(SpecError) as e:
        load_spec("dit_xl", model__widht=3)
    assert str(e.value).startswith("override model__widht=3 model.widht: unknown key 'widht'; allowed here: family,")
    with pytest.raises(SpecError) as e:
        load_spec("dit_xl", name__x=1)
    assert str(e.value) == "override name__x: name is 'dit_xl', not a mapping"


def test_json_schema_accepts_presets_and_rejects_typos():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    assert schema["$schema"].endswith("2020-12/schema") and schema["additionalProperties"] is False
    validator = jsonschema.Draft202012Validator(schema)
    for name in preset_names():  # resolved presets are valid documents
        validator.validate(json.loads(load_spec(name).model_dump_json()))
    assert not validator.is_valid({"model": {"widht": 3}})
    assert not validator.is_valid({"passes": [{"name": "route", "drop": 2}]})


# ----------------------------------------------------------------------------- never a traceback
_scalar = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                     max_leaves=12)
_KEYS = {"name": _json, "extends": st.sampled_from(["dit_s", "digits", "nope", "../x", ""]) | _json,
         "model": st.fixed_dictionaries({}, optional={k: st.integers(-2, 2000) | _json for k in
                                                      ["width", "depth", "heads", "patch", "pos", "input", "num_classes"]}) | _json,
         "passes": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["partition", "route", "fuse", "path_drop", "pdg", "x"])},
                                                  optional={k: _json | st.floats(-1, 2) for k in
                                                            ["encoder", "decoder", "drop", "group", "kind", "middle"]}), max_size=4),
         "target": _json, "train": _json, "sample": _json}
_specs = st.fixed_dictionaries({}, optional=_KEYS) | _json


def _check_cli(data: bytes):
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        os.write(fd, data)
        os.close(fd)
        try:
            load_spec(path)
            ok = True
        except SpecError:
            ok = False
        rc = cli.main(["validate", path])  # any other exception fails the test with its traceback
        assert rc == (0 if ok else 2)
    finally:
        os.unlink(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=_specs)
def test_arbitrary_yaml_never_tracebacks(doc, capsys):
    _check_cli(yaml.safe_dump(doc).encode())
    capsys.readouterr()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
       | st.text(alphabet=":-[]{}&*!|>'\"%@` \n#,?ab01.", max_size=120).map(str.encode))  # YAML punctuation
def test_arbitrary_bytes_never_traceback(data, capsys):
    _check_cli(data)
    capsys.readouterr()
