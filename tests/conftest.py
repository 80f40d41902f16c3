"""Every test gets its own VGF_HOME (tracking store, artifacts, digest memo) and no tracking server."""

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(autouse=True)
def vgf_home(tmp_path, monkeypatch):
    home = tmp_path / "vgf-home"
    monkeypatch.setenv("VGF_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home
