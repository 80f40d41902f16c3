"""Terminal output: results on stdout, progress and notes on stderr, nothing but JSON with ``--json``."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class UI:
    def __init__(self, json_mode: bool = False):
        self.json_mode = json_mode
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def note(self, message: str) -> None:
        if not self.json_mode:
            self.err.print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        # Warnings reach stderr in every mode: a CI log should show them.
        self.err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)

    def show(self, renderable) -> None:
        if not self.json_mode:
            self.out.print(renderable)

    def emit_json(self, value: dict) -> None:
        """One strict JSON object on stdout: NaN and infinities become the strings "nan", "inf", "-inf"
        (JSON has no such numbers, and a bare NaN token breaks jq and most parsers)."""
        sys.stdout.write(json.dumps(_finite(value), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")
        sys.stdout.flush()

    def status(self, message: str):
        """A spinner while something without a known length runs; silent under ``--json``."""
        return contextlib.nullcontext() if self.json_mode else self.err.status(message, spinner="dots")

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None, unit: str = "it") -> Iterator["Bar"]:
        """A progress bar with a rate column; silent under ``--json``."""
        columns = [
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, disable=self.json_mode, transient=False) as progress:
            task = progress.add_task(description, total=total, rate="")
            yield Bar(progress, task, unit)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class Bar:
    def __init__(self, progress: Progress, task, unit: str):
        self._progress, self._task, self._unit = progress, task, unit

    def advance(self, amount: float = 1, **fields) -> None:
        self._progress.advance(self._task, amount)
        speed = self._progress.tasks[self._task].speed
        rate = f"{speed:,.0f} {self._unit}/s" if speed else ""
        self._progress.update(self._task, rate=rate, **fields)

    def update(self, **fields) -> None:
        self._progress.update(self._task, **fields)


def summary_table(title: str, summary: dict):
    """A two-column table of a stage's summary: the human form of what ``--json`` prints."""
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), _fmt(value))
    return table


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
