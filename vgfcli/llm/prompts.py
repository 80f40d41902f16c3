"""Prompt sets: a JSON Lines file, a Parquet file or a ``datasets`` folder (``save_to_disk``) -> the
canonical files every later LM stage reads.

A row has a prompt and, optionally, a reference response (the SFT target), a chosen and a rejected
response (a preference pair for train-reward). The canonical form is JSON Lines, one object per row
with exactly those keys that are present (``prompt``, ``reference``, ``chosen``, ``rejected``), keys
sorted, UTF-8: the same rows give the same bytes, so the runner's sha256 of the file is its identity.
The held-out split is the source's own (a split column, or a ``datasets`` folder's validation/test
split) or else a hash split of the prompt's text, so it does not depend on the rows' order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vgfcli.errors import VgfError

FIELDS = ("prompt", "reference", "chosen", "rejected")
VAL_SPLITS = ("val", "validation", "test", "eval")


def read_rows(path: Path) -> tuple[list[dict], list[dict] | None]:
    """Raw rows of a prompt set, and the rows of its own held-out split where it has one."""
    if path.is_dir():
        return _read_datasets_folder(path)
    if not path.is_file():
        raise VgfError(f"{path}: no such file or folder (prompts.path: .jsonl, .parquet or a datasets folder)")
    if path.suffix == ".parquet":
        return _read_parquet(path), None
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path), None
    raise VgfError(f"{path}: unknown prompt set format '{path.suffix}' (.jsonl, .parquet, or a datasets folder)")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise VgfError(f"{path} line {number}: not JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise VgfError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
                rows.append(row)
        except UnicodeDecodeError:
            raise VgfError(f"{path}: not UTF-8 text (a JSON Lines file is expected)") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise VgfError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:120]})") from None


def _read_datasets_folder(path: Path) -> tuple[list[dict], list[dict] | None]:
    try:
        import datasets
    except ImportError:
        raise VgfError(f"{path}: reading a datasets folder needs the `datasets` package") from None
    datasets.disable_progress_bars()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise VgfError(f"{path}: not a datasets folder saved with save_to_disk ({' '.join(str(exc).split())[:120]})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise VgfError(f"{path}: a DatasetDict without a 'train' split (has {', '.join(loaded)})")
        val = next((loaded[s].to_list() for s in VAL_SPLITS if s in loaded), None)
        return loaded["train"].to_list(), val
    return loaded.to_list(), None


def canonical_rows(rows: list[dict], fields: dict[str, str | None], where: str) -> list[dict]:
    """Rows with the canonical keys, from the source's columns (``fields``: canonical key -> column;
    ``prompt`` required). Every value must be a string (the prompt non-empty); a missing or non-text
    value is an error naming the row and column."""
    if not rows:
        raise VgfError(f"{where}: no rows")
    out = []
    for number, row in enumerate(rows, 1):
        item = {}
        for key, column in fields.items():
            if column is None:
                continue
            if column not in row:
                raise VgfError(f"{where} row {number}: no field '{column}' (prompts.{key}_field); it has "
                               f"{', '.join(sorted(map(str, row))) or 'no fields'}")
            value = row[column]
            if not isinstance(value, str):  # None, a NaN of a Parquet column, a number
                raise VgfError(f"{where} row {number}: field '{column}' is {type(value).__name__} "
                               f"{str(value)[:40]!r}, not text")
            item[key] = value
        if not item["prompt"].strip():
            raise VgfError(f"{where} row {number}: empty prompt")
        if ("chosen" in item) != ("rejected" in item):
            raise VgfError(f"{where}: a preference pair needs both prompts.chosen_field and prompts.rejected_field")
        out.append(item)
    return out


def hash_split(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, val): a row is held out when the hash of its prompt falls below ``val_fraction``."""
    train, val = [], []
    for row in rows:
        digest = hashlib.sha256(row["prompt"].encode("utf-8")).digest()
        (val if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else train).append(row)
    return train, val


def column_split(rows: list[dict], column: str, where: str) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for number, row in enumerate(rows, 1):
        name = str(row.get(column, "")).lower()
        if name == "train":
            train.append(row)
        elif name in VAL_SPLITS:
            val.append(row)
        else:
            raise VgfError(f"{where} row {number}: prompts.split_field '{column}' is {row.get(column)!r} "
                           f"(train or one of {', '.join(VAL_SPLITS)})")
    return train, val


def write_jsonl(rows: list[dict], path: Path) -> None:
    from vgfcli.cache import write_bytes_atomic

    text = "".join(json.dumps({k: row[k] for k in FIELDS if k in row}, ensure_ascii=False, sort_keys=True) + "\n"
                   for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def load_jsonl(path: Path) -> list[dict]:
    """A canonical prompt file (written by ``write_jsonl``)."""
    with Path(path).open("r", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
