"""Installing from a built wheel, as README and docs/integrations.md tell a user to do until there is a
release: `pip wheel --no-deps -w dist/ .` in a copy of the checkout, the wheel installed into a fresh
virtual environment, its `fairalign` command runs and the package data (configs/*.yaml) is there.

Simplifications, to stay offline and take seconds: the wheel is built without build isolation (this
environment's setuptools, which torch requires at >= 77 anyway, instead of a download), and installed
`--no-deps` into a venv without pip (this pip installs into it with `--python`): `fairalign --help`
needs nothing beyond the standard library, so nothing else is installed. The documented extras form
(`pip install "dist/<wheel>[trl]"`) is checked with pip's --dry-run."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _run(argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kw)
    assert res.returncode == 0, f"{argv}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res


def _checkout_copy(dest: Path) -> Path:
    """What the build reads, copied (so the build writes nothing into the repository)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", dest / "src", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "configs", dest / "configs")
    return dest


def test_wheel_installs_into_a_fresh_venv_with_its_command_and_configs(tmp_path):
    checkout, dist, venv = _checkout_copy(tmp_path / "checkout"), tmp_path / "dist", tmp_path / "venv"
    _run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, "."], cwd=checkout)
    (wheel,) = dist.glob("fairalign-*.whl")
    for doc in ("README.md", "docs/integrations.md"):  # the file name the docs tell the user to install
        assert f"dist/{wheel.name}[" in (ROOT / doc).read_text(), doc
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    _run([*PIP, "--python", python, "install", "--no-deps", "--no-index", "--dry-run", "-q", f"{wheel}[trl]"])
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the installed copy
    res = _run([venv / "bin" / "fairalign", "--help"], cwd=tmp_path, env=env)
    assert res.stdout.startswith("usage: fairalign [-h] COMMAND ...")
    assert all(f"\n    {c} " in res.stdout for c in ("train", "demo", "config", "eval", "compare", "report"))
    probe = ("import importlib.resources as r, json, fairalign; root = r.files('fairalign') / 'configs'; "
             "print(json.dumps([fairalign.__file__, sorted(p.name for p in root.iterdir()), "
             "sorted(p.name for p in (root / 'accelerate').iterdir())]))")
    where, configs, accelerate = json.loads(_run([python, "-c", probe], cwd=tmp_path, env=env).stdout)
    assert where.startswith(str(venv))
    assert configs == sorted([p.name for p in (ROOT / "configs").glob("*.yaml")] + ["accelerate"])
    assert accelerate == sorted(p.name for p in (ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert re.fullmatch(r"fairalign-\d+\.\d+\.\d+-py3-none-any\.whl", wheel.name)
