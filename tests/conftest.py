"""Every test gets its own VGF_HOME (tracking store, artifacts, digest memo) and no tracking server.

Creating MLflow's SQLite schema takes seconds, so it is made once per session and each test starts
from a copy of that empty store (the "vgf" experiment, with its artifact folder, is made per test).
"""

import os
import shutil

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
# One thread per process: `make test` runs a worker per core (pytest-xdist), and the commands the tests
# start in child processes inherit this, so no core ever runs two spinning OpenMP pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# submitit runs logging.config.dictConfig when it is first imported (vgf sweep imports it), which closes
# every logging handler made before. absl's handler (absl comes with mujoco and ogbench) writes to the
# sys.stderr it was made with and closes it unless it is the current one: under pytest that is a capture
# stream the worker keeps using, and every later test in the worker would fail on a closed file. Imported
# here first, submitit configures logging before any absl handler exists.
import submitit  # noqa: E402,F401


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    from vgfcli.tracking import _quiet_mlflow_logs

    _quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the schema
    return db


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Test tensors are tiny: one thread is fastest, and immune to OpenMP spin contention on 2 cores."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def vgf_home(tmp_path, monkeypatch, empty_store):
    home = tmp_path / "vgf-home"
    home.mkdir()
    shutil.copy(empty_store, home / "mlflow.db")
    monkeypatch.setenv("VGF_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # pytest-xdist workers inherit COLUMNS=80 from the controller; vgf honours COLUMNS when set, so a
    # test would see the 80-column tables of a terminal instead of what a CI log (no COLUMNS) shows.
    monkeypatch.delenv("COLUMNS", raising=False)
    return home
