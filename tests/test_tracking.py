"""Reading the tracking store through MLflow's public API: filters, order, paging, and run-id prefixes
however old the run."""

import shutil

import pytest

from vgfcli.errors import VgfError
from vgfcli.tracking import SEARCH_PAGE, Store

OLD_RUNS = SEARCH_PAGE + 50  # more than one page, so the oldest lie beyond the newest thousand


def _client(db):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def _make_run(client, experiment_id, start_ms, stage="evaluate", key="k" * 64, status="FINISHED"):
    tags = {"vgf.stage": stage, "vgf.cache_key": key} if stage else {"vgf.pipeline": "1"}
    run_id = client.create_run(experiment_id, start_time=start_ms, tags=tags).info.run_id
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory, empty_store):
    """A store of OLD_RUNS running stage runs one second apart, made once: (its file, ids oldest first)."""
    db = tmp_path_factory.mktemp("many-runs") / "mlflow.db"
    shutil.copy(empty_store, db)
    client = _client(db)
    experiment_id = client.create_experiment("vgf", artifact_location=(db.parent / "artifacts").as_uri())
    ids = [_make_run(client, experiment_id, 1_000_000 + 1000 * i, status="RUNNING") for i in range(OLD_RUNS)]
    return db, ids


@pytest.fixture
def store_of_many(many_runs, vgf_home):
    db, ids = many_runs
    shutil.copy(db, vgf_home / "mlflow.db")
    return Store("vgf"), ids


def test_get_finds_a_run_by_prefix_however_old(store_of_many):
    store, ids = store_of_many
    oldest = ids[0]
    assert store.get(oldest[:12]).run_id == oldest  # beyond the newest thousand
    assert store.get(oldest).run_id == oldest
    record = store.get(ids[1][:12])
    assert (record.run_id, record.stage, record.status, record.start_time) == (ids[1], "evaluate", "RUNNING", 1001.0)


def test_a_shared_prefix_names_two_runs_and_a_missing_one_says_so(store_of_many):
    store, ids = store_of_many
    by_first_two = {}
    shared = next(run_id[:2] for run_id in ids if by_first_two.setdefault(run_id[:2], run_id) != run_id)
    newest_two = [run_id for run_id in reversed(ids) if run_id.startswith(shared)][:2]
    with pytest.raises(VgfError) as error:
        store.get(shared)
    message = str(error.value)
    assert "ambiguous" in message and all(run_id in message for run_id in newest_two) and "\n" not in message
    for missing in ("zz", "ab%", "a_"):  # never a LIKE wildcard: an id is hex
        with pytest.raises(VgfError, match=f"no run '{missing}'"):
            store.get(missing)


def test_find_pages_past_one_search(store_of_many):
    store, ids = store_of_many
    found = store.find(status=None, limit=OLD_RUNS + 10)
    assert [r.run_id for r in found] == ids[::-1]
    assert [r.run_id for r in store.find(status=None, limit=3)] == ids[:-4:-1]


def test_find_filters_by_stage_key_and_status_newest_first(vgf_home):
    store = Store("vgf")
    assert store.find(status=None) == []  # no experiment yet: nothing, and nothing made
    client, experiment_id = store.client(), store.experiment_id()
    made = {(stage, key, status, t): _make_run(client, experiment_id, (t + 1) * 1000, stage, key, status)
            for t, (stage, key, status) in enumerate([
                ("ingest", "a" * 64, "FINISHED"), ("evaluate", "a" * 64, "FINISHED"),
                ("evaluate", "b" * 64, "FAILED"), ("evaluate", "a" * 64, "FINISHED"),
                (None, "", "FINISHED"),  # a pipeline's parent run: never listed
                ("evaluate", "a" * 64, "KILLED")])}
    ids = {k[3]: run_id for k, run_id in made.items()}

    def found(**filters):
        return [r.run_id for r in store.find(**filters)]

    assert found(stage="evaluate", cache_key="a" * 64) == [ids[3], ids[1]]
    assert found(stage="evaluate", status=None) == [ids[5], ids[3], ids[2], ids[1]]
    assert found(status="FAILED") == [ids[2]]
    assert found() == [ids[3], ids[1], ids[0]]
    assert found(status=None, limit=2) == [ids[5], ids[3]]
    first = store.find(cache_key="a" * 64, stage="ingest")[0]
    assert (first.stage, first.cache_key, first.status, first.start_time) == ("ingest", "a" * 64, "FINISHED", 1.0)
    with pytest.raises(VgfError, match="no run"):
        store.get(ids[4])  # the parent run is no stage run
