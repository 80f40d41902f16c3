"""`vgf report`: finished evaluate runs aggregated into the table that goes in a paper.

Rows are tasks, then the mean over the tasks of each env family that has several (the papers average
the 5 tasks of an environment); columns are methods (one column per swept setting: ``vgf L=2``,
``qgf w=0.04``; a method evaluated without a sweep is one column). A cell is the mean over seeds in the
papers' units (success in percent, D4RL-normalised scores as they are) with its 95 % interval, from
the per-episode outcomes that every evaluate run keeps in ``results.json`` (``vgfcli.stats``: seeds
and episodes resampled; for success rates widened to at least the Wilson interval of the pooled
episodes); a cell with one seed shows its mean alone. When one (task, method, preset,
chunk, seed) was evaluated more than once, the newest run counts. The reference row of every run
(the cloned behaviour policy) is the ``reference`` column, over the seeds of all methods' runs.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vgfcli.errors import VgfError

FAMILY_SUFFIX = " (family mean)"


@dataclass
class Cell:
    outcomes: dict[int, np.ndarray] = field(default_factory=dict)  # seed -> per-episode scores (or [score])
    replicates: np.ndarray | None = None  # bootstrap means (set by collect)
    tasks: int = 1  # tasks averaged (family rows)
    # Success rates: (successes, episodes) pooled over seeds (and tasks). Their Wilson interval is a
    # floor on the bootstrap's width, which is zero when every episode ended alike (0 of 90 is not
    # "exactly 0 %"). None for other metrics.
    pooled: tuple[float, int] | None = None

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def by_seed(self) -> dict[int, float]:
        return {seed: float(np.mean(x)) for seed, x in sorted(self.outcomes.items())}

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.by_seed.values())))

    @property
    def std(self) -> float:  # population std over seeds (0 for one seed)
        values = list(self.by_seed.values())
        return float(np.std(values)) if values else float("nan")

    @property
    def interval(self) -> tuple[float, float] | None:
        from vgfcli.stats import percentile_interval, wilson

        if self.replicates is None or self.n < 2:
            return None
        lo, hi = percentile_interval(self.replicates)
        if self.pooled is not None:
            w_lo, w_hi = wilson(*self.pooled)
            lo, hi = min(lo, w_lo), max(hi, w_hi)
        return (lo, hi)


class Units:
    """A report's units from its ``metric``: success rates in percent, as the papers give them."""

    metric: str

    @property
    def scale(self) -> float:
        return 100.0 if self.metric == "success" else 1.0

    @property
    def unit(self) -> str:
        return "success (%)" if self.metric == "success" else self.metric.replace("_", " ")


@dataclass
class Report(Units):
    metric: str
    tasks: list[str]  # task rows, then family rows
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    runs: int

    def rows(self) -> list[dict]:
        """One JSON-able row per (task, column) with data, in the report's units."""
        out = []
        for (task, column), cell in sorted(self.cells.items()):
            interval = cell.interval
            out.append({"task": task, "column": column, "kind": "family" if task.endswith(FAMILY_SUFFIX) else "task",
                        "mean": cell.mean * self.scale, "std": cell.std * self.scale,
                        "ci95": [v * self.scale for v in interval] if interval else None, "seeds": cell.n,
                        "tasks": cell.tasks,
                        "by_seed": {str(k): v * self.scale for k, v in cell.by_seed.items()}})
        return out

    def text(self, task: str, column: str) -> str:
        cell = self.cells.get((task, column))
        if cell is None:
            return "-"
        k = self.scale
        interval = cell.interval
        ci = f" [{interval[0] * k:.1f}, {interval[1] * k:.1f}]" if interval else ""
        return f"{cell.mean * k:.1f}{ci} (n={cell.n})"


def task_family(task: str) -> str | None:
    """The env family whose tasks papers average: ``cube-single-play`` for its singletask names, the
    run-script family for D4RL names (``d4rl-locomotion``); None when unknown."""
    from vgfcli.protocols import family_candidates

    name, _, chunk = task.partition(" (H=")
    suffix = f" (H={chunk}" if chunk else ""
    if "-singletask" in name:
        return name.split("-singletask")[0] + suffix
    families = family_candidates(name)  # most specific first: a D4RL dataset's own, then its run-script family
    return families[-1] + suffix if families else None


def _outcomes(record) -> dict[str, list[float]]:
    """Per-episode scores of each row (by label) from the run's results.json; {} for older runs."""
    paths = record.output_paths() or {}
    path = paths.get("results")
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
        return {row["label"]: row["outcomes"]["score"] for row in data["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def collect(experiment: str, tasks=(), methods=(), presets=()) -> Report:
    """Aggregate the store's finished evaluate runs, filtered by task, method and preset names."""
    from vgfcli.stats import bootstrap_mean
    from vgfcli.tracking import Store

    records = Store(experiment).find(stage="evaluate")  # newest first
    latest: dict[tuple, np.ndarray] = {}  # (task, column, preset, seed) -> per-episode scores, newest kept
    reference: dict[tuple, np.ndarray] = {}
    metrics = set()
    used = 0
    for record in records:
        s = record.summary
        task, method, preset = s.get("task"), s.get("method"), s.get("preset")
        if not task or "results" not in s or (tasks and task not in tasks) or (methods and method not in methods) \
                or (presets and preset not in presets):
            continue
        used += 1
        seed, chunk = int(s.get("seed", 0)), int(s.get("chunk", 1))
        rows, episodes = s["results"], _outcomes(record)

        def scores(row):
            return np.asarray(episodes.get(row["label"], [row["score"]]), dtype=np.float64)

        task_key = task if chunk == 1 else f"{task} (H={chunk})"
        reference.setdefault((task_key, seed, preset), scores(rows[0]))
        settings = rows[1:] or rows[:1]  # a method without settings (bc) IS its reference row
        for row in settings:
            column = method if len(settings) == 1 else f"{method} {row['label']}"
            latest.setdefault((task_key, column, preset, seed), scores(row))
            metrics.add(row["metric"])
    if not used:
        where = ", ".join(f"{k}={','.join(v)}" for k, v in (("task", tasks), ("method", methods),
                                                              ("preset", presets)) if v)
        raise VgfError(f"no finished evaluate runs in experiment '{experiment}'" + (f" with {where}" if where else "")
                       + ": run vgf evaluate or vgf pipeline first")
    multi_preset = len({k[2] for k in latest}) > 1
    cells: dict[tuple[str, str], Cell] = {}

    def label(column: str, preset) -> str:
        return f"{column} [{preset}]" if multi_preset else column

    for (task, column, preset, seed), outcome in latest.items():
        cells.setdefault((task, label(column, preset)), Cell()).outcomes[seed] = outcome
    for (task, seed, preset), outcome in reference.items():
        cells.setdefault((task, label("reference", preset)), Cell()).outcomes[seed] = outcome
    metric = metrics.pop() if len(metrics) == 1 else "score"
    for i, ((task, column), cell) in enumerate(sorted(cells.items())):
        cell.replicates = bootstrap_mean(list(cell.outcomes.values()), seed=i)
        if metric == "success":
            cell.pooled = _pooled(cell.outcomes.values())
    task_rows = sorted({t for t, _ in cells})
    family_rows = _family_means(cells, task_rows)
    columns = sorted({c for _, c in cells}, key=lambda c: (not c.startswith("reference"), c))
    return Report(metric, task_rows + family_rows, columns, cells, used)


def _pooled(outcomes) -> tuple[float, int]:
    arrays = [np.asarray(a) for a in outcomes]
    return float(sum(a.sum() for a in arrays)), int(sum(a.size for a in arrays))


def _family_means(cells: dict[tuple[str, str], Cell], task_rows: list[str]) -> list[str]:
    """Add a mean-over-tasks cell per (family, column) where a family has several tasks; the family's
    seeds are the seeds every averaged task has, its replicates the mean of the tasks' replicates."""
    families: dict[str, list[str]] = {}
    for task in task_rows:
        family = task_family(task)
        if family is not None:
            families.setdefault(family, []).append(task)
    rows = []
    for family, members in sorted(families.items()):
        if len(members) < 2:
            continue
        row = family + FAMILY_SUFFIX
        for column in {c for _, c in cells}:
            parts = [cells[(t, column)] for t in members if (t, column) in cells]
            if len(parts) < 2:
                continue
            seeds = set.intersection(*(set(p.outcomes) for p in parts))
            mean = Cell(tasks=len(parts))
            # per seed: the task means averaged (a single number per seed)
            mean.outcomes = {s: np.array([np.mean([np.mean(p.outcomes[s]) for p in parts])]) for s in sorted(seeds)}
            mean.replicates = np.mean([p.replicates for p in parts], axis=0)
            if all(p.pooled is not None for p in parts):
                mean.pooled = (sum(p.pooled[0] for p in parts), sum(p.pooled[1] for p in parts))
            cells[(row, column)] = mean
        rows.append(row)
    return rows


def rich_table(report: Report):
    from rich.table import Table

    table = Table(title=f"{report.unit}: mean over seeds [95 % interval] ({report.runs} evaluate runs)",
                  title_justify="left")
    table.add_column("task", overflow="fold")
    for column in report.columns:
        table.add_column(column, justify="right")
    for task in report.tasks:
        table.add_row(task, *(report.text(task, c) for c in report.columns))
    return table


def markdown(report: Report) -> str:
    lines = [f"| task | {' | '.join(report.columns)} |", "|---" * (len(report.columns) + 1) + "|"]
    for task in report.tasks:
        lines.append(f"| {task} | {' | '.join(report.text(task, c) for c in report.columns)} |")
    how = "seeds and episodes resampled; for success at least the pooled Wilson interval"
    return f"{report.unit}: mean over seeds [95 % interval: {how}] (n = seeds)\n\n" + "\n".join(lines) + "\n"


def csv_text(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "column", "unit", "mean", "ci95_low", "ci95_high", "std", "seeds", "tasks"])
    for row in report.rows():
        low, high = row["ci95"] or ("", "")
        writer.writerow([row["task"], row["column"], report.unit, f"{row['mean']:.6g}",
                         low if low == "" else f"{low:.6g}", high if high == "" else f"{high:.6g}",
                         f"{row['std']:.6g}", row["seeds"], row["tasks"]])
    return buffer.getvalue()


def shown(report: Report):
    """What ``vgf report`` prints."""
    return rich_table(report)


def write_outputs(report: Report, out_dir: Path) -> dict[str, Path]:
    """report.md, report.csv and report.png in ``out_dir``, each written atomically."""
    from vgfcli.plots import bar_chart

    return write_files(out_dir, "report", markdown(report), csv_text(report), lambda path: bar_chart(report, path))


def write_files(out_dir: Path, stem: str, markdown_text: str, csv_body: str, draw) -> dict[str, Path]:
    """``stem``.md, .csv and .png (``draw(path)``) in ``out_dir``, each written atomically."""
    from vgfcli.cache import write_bytes_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / f"{stem}.md", "csv": out_dir / f"{stem}.csv", "plot": out_dir / f"{stem}.png"}
    write_bytes_atomic(paths["markdown"], markdown_text.encode())
    write_bytes_atomic(paths["csv"], csv_body.encode())
    draw(paths["plot"])
    return paths
