"""What an installed vgf puts on a user's machine, and its shell completion."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from vgfcli.completion import candidates
from vgfcli.config import config_dir

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_only_under_the_vgfcli_namespace(tmp_path):
    """stages/ and conf/ ship as vgfcli.stages and vgfcli.conf, so nothing named `conf` or `stages` (names
    other projects use too) lands in site-packages, and the installed package finds its YAML files."""
    src = tmp_path / "src"
    for name in ("vgfcli", "stages", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("vgf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"vgfcli", f"{wheel.name.split('-py3')[0]}.dist-info"}
    assert "vgfcli/conf/method/vgf.yaml" in names and "vgfcli/stages/evaluate.py" in names

    # the unpacked wheel, first on the path, outside the repository: the stages and the config come from it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import vgfcli.stages.evaluate as e, vgfcli.config as c, importlib.util as u;"
             "print(e.__file__); print(c.config_dir()); print(u.find_spec('stages'), u.find_spec('conf'))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.splitlines()
    assert out[0].startswith(str(site / "vgfcli" / "stages"))
    assert out[1] == str(site / "vgfcli" / "conf")
    assert out[2] == "None None"
    cfg = subprocess.run([sys.executable, "-m", "vgfcli", "train-critic", "--cfg", "method=qam"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    assert "name: qam" in cfg.stdout


def test_completion_of_overrides():
    conf = config_dir()
    assert candidates("train-critic", "method=", conf) == [f"method={p.stem}"
                                                          for p in sorted((conf / "method").glob("*.yaml"))]
    assert candidates("ingest", "dataset=d", conf) == ["dataset=d4rl"]
    assert "policy.steps=" in candidates("evaluate", "policy.s", conf)
    assert "method.num_particles=" in candidates("train-critic", "method.num_", conf)  # the group's default option
    assert candidates("train-critic", "pol", conf) == ["policy."]
    assert candidates("collect", "policy.", conf) == []  # collect has no policy section
    assert candidates("train-critic", "seed=", conf) == []  # a value, not a group: nothing to offer


def test_completion_through_the_shell_hook():
    """What bash gets back from `vgf` when the user presses TAB (Typer's completion protocol)."""
    env = {**os.environ, "_VGF_COMPLETE": "complete_bash", "COMP_WORDS": "vgf train-critic preset=q", "COMP_CWORD": "2"}
    out = subprocess.run([sys.executable, "-m", "vgfcli"], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["preset=qgf-paper", "preset=quick"]
