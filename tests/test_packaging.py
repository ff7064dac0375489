"""The wheel: built from a copy of the source, installed into a fresh venv (system site-packages for torch,
no network), then used from outside the repository: all three packages, a bundled preset, the console script."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

CHECK = """
import sprintc, sprintc.passes, sprintc.targets, sprintc.spec
from pathlib import Path
venv = Path(sys.prefix).resolve()
for mod in (sprintc, sprintc.passes, sprintc.targets):
    assert Path(mod.__file__).resolve().is_relative_to(venv), (mod.__name__, mod.__file__)
spec = sprintc.load_spec("dit_xl")
assert spec.name == "dit_xl" and spec.model.width == 1152
assert sprintc.spec.resolve_spec_path("sit_xl_sprint").resolve().is_relative_to(venv / "lib")
print("ok", len(sprintc.spec.preset_names()))
"""


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the shared checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "sprintc", "passes", "targets", "specs"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    run = lambda *cmd, cwd=tmp_path: subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(src))
    assert r.returncode == 0, r.stderr
    wheel = next((tmp_path / "dist").glob("sprintc-*.whl"))
    r = run(sys.executable, "-m", "venv", "--system-site-packages", str(tmp_path / "venv"))
    assert r.returncode == 0, r.stderr
    py, bin_ = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin"
    r = run(str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel))
    assert r.returncode == 0, r.stderr
    r = run(str(py), "-c", "import sys\n" + CHECK)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "9"]
    r = run(str(bin_ / "sprintc"), "--help")
    assert r.returncode == 0 and "validate" in r.stdout and "build" in r.stdout, r.stderr
    r = run(str(py), "-m", "sprintc", "validate", "digits_sprint")
    assert r.returncode == 0 and "name: digits_sprint" in r.stdout, r.stderr
