"""Setting up the MLflow client: the local SQLite store made atomically, a tracking server checked before
use, MLflow's own logging kept quiet, and the git commit a run records (``vgfcli.tracking`` uses them)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vgfcli.errors import VgfError
from vgfcli.locks import store_lock


def open_sqlite_store(db: Path, uri: str):
    """A client of the local store. A new store's schema is made under a temporary name and moved
    into place only when complete, one process at a time: a kill -9 while MLflow creates and migrates
    it leaves a stray temporary file (removed by the next process), never a half-made store. A file
    that is not a store MLflow can open is named in a clear error."""
    from mlflow.tracking import MlflowClient

    if not db.exists():  # the lock only guards making a store: reading one needs no write access
        db.parent.mkdir(parents=True, exist_ok=True)
        with store_lock():
            for stray in db.parent.glob(f".{db.name}.creating-*"):
                stray.unlink(missing_ok=True)  # we hold the lock: nobody else is making one
            if not db.exists():
                tmp = db.with_name(f".{db.name}.creating-{os.getpid()}")
                MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
                os.replace(tmp, db)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as exc:  # not a database, a schema from another MLflow, ...
        detail = " ".join(str(exc).split())[:200]
        raise VgfError(f"the tracking store {db} cannot be opened ({type(exc).__name__}: {detail}); move it "
                       "away to start a new store, or use the MLflow version that made it") from None
    return client


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server that does not answer within ``timeout_s`` is the user's to fix: say so at once
    (MLflow itself retries for minutes without a word). Its later requests fail fast too."""
    import urllib.error
    import urllib.request

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise VgfError(f"tracking server {uri} does not answer ({reason}); start it, or unset MLFLOW_TRACKING_URI "
                       "to use the local store") from None


def quiet_mlflow_logs() -> None:
    # MLflow and alembic announce every schema migration at INFO on first use of a store, and against
    # a tracking server MLflow prints "View run ... at" on STDOUT, which is --json's.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (its import sets its loggers' levels: ours must come after)

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The store layer logs every database error with its traceback before raising it; vgf reports the
    # error itself, in one line (a full disk: "no space left on the device ...").
    logging.getLogger("mlflow.store").setLevel(logging.CRITICAL)


def git_commit() -> str | None:
    """The commit of the vgf source tree, when it is a git checkout."""
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_file = head.parent / ref[5:]
            if ref_file.exists():
                return ref_file.read_text().strip()
            packed = (head.parent / "packed-refs").read_text().splitlines()
            return next((line.split()[0] for line in packed if line.endswith(ref[5:])), None)
        return ref
    except OSError:
        return None
