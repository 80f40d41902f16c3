"""Terminal output: results on stdout, progress and notes on stderr, nothing but JSON with ``--json``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
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
        """Print a result. On a terminal it fits the window; piped (a CI log, a file) with no ``COLUMNS``
        set, it is drawn at its natural width, so no number is cut or wrapped at rich's default of 80."""
        if self.json_mode:
            return
        if self.out.is_terminal or os.environ.get("COLUMNS"):
            self.out.print(renderable)
            return
        width = natural_width(self.out, renderable)
        if getattr(renderable, "title", None) and hasattr(renderable, "min_width"):
            renderable.min_width = width  # a table draws its title at its own width: let it take the title's
        Console(highlight=False, width=width).print(renderable)

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
        """A progress bar with a rate column on a terminal; under ``--json`` or when stderr is not a
        terminal (a CI log, a job's log file), one plain line on stderr every ``LOG_EVERY_S`` seconds."""
        if self.json_mode or not self.err.is_terminal:
            bar = LogBar(description, total, unit)
            yield bar
            bar.finish()
            return
        columns = [
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.err, disable=self.json_mode, transient=False) as progress:
            task = progress.add_task(description, total=total, rate="")
            yield Bar(progress, task, unit)


def natural_width(console: Console, renderable) -> int:
    """The width ``renderable`` takes with no limit: its widest line, or its title if that is wider."""
    from rich.measure import Measurement
    from rich.text import Text

    wide = console.options.update(width=100_000, max_width=100_000)
    width = Measurement.get(console, wide, renderable).maximum
    title = getattr(renderable, "title", None)
    if title:
        width = max(width, Text.from_markup(title).cell_len if isinstance(title, str) else len(str(title)))
    return max(int(width), 20)


LOG_EVERY_S = 30.0


class LogBar:
    """Progress as log lines: ``train-critic (vgf): 2,000/6,000 updates (33 %), 41.2 updates/s, ETA 1m37s``."""

    def __init__(self, description: str, total: float | None, unit: str, every_s: float | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.every_s = LOG_EVERY_S if every_s is None else every_s
        self.done = 0.0
        self._start = self._last = time.monotonic()

    def advance(self, amount: float = 1, **fields) -> None:
        self.done += amount
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def update(self, completed: float | None = None, **fields) -> None:
        if completed is not None:
            self.advance(completed - self.done)

    def finish(self) -> None:
        if self.done and time.monotonic() - self._start >= self.every_s:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self._start, 1e-9)
        parts = [f"{self.description}: {self.done:,.0f}"]
        if self.total:
            parts[0] += f"/{self.total:,.0f} {self.unit} ({100 * self.done / self.total:.0f} %)"
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta = f", ETA {_duration(left)}" if math.isfinite(left) else ""
        else:
            parts[0] += f" {self.unit}"
            eta = ""
        sys.stderr.write(f"{parts[0]}, {rate:,.1f} {self.unit}/s{eta}\n")
        sys.stderr.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


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


def stages_table(stages):
    """`vgf pipeline`'s steps: (step, Outcome) pairs as a table of stage, run and cache hit."""
    from rich.table import Table

    table = Table(title="pipeline", title_justify="left")
    for column in ("step", "stage", "run", "cache"):
        table.add_column(column)
    for name, o in stages:
        table.add_row(name, o.stage, o.run_id[:8], "[green]hit[/]" if o.cache_hit else "[cyan]ran[/]")
    return table


def age(start: float) -> str:
    """``start`` (seconds since the epoch) as "3m ago"."""
    seconds = max(0.0, time.time() - start)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
