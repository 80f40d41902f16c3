"""`vgf report`: finished evaluate runs aggregated into the table that goes in a paper.

Rows are tasks, columns are methods (one column per swept setting: ``vgf L=2``, ``qgf w=0.04``; a
method evaluated without a sweep is one column), and a cell is mean +- standard deviation of the
score over seeds, with the seed count. When one (task, method, preset, chunk, seed) was evaluated more
than once, the newest run counts. The reference row of every run (the cloned behaviour policy) is
the ``reference`` column, averaged over the seeds of all methods' runs (same seed, same policy).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from vgfcli.errors import VgfError


@dataclass
class Cell:
    scores: dict[int, float] = field(default_factory=dict)  # seed -> score

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return sum(self.scores.values()) / self.n

    @property
    def std(self) -> float:  # population std over seeds (0 for one seed), as RL papers report
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.scores.values()) / self.n)


@dataclass
class Report:
    metric: str
    tasks: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    runs: int

    def rows(self) -> list[dict]:
        """One JSON-able row per (task, column) with data."""
        out = []
        for (task, column), cell in sorted(self.cells.items()):
            out.append({"task": task, "column": column, "mean": cell.mean, "std": cell.std, "seeds": cell.n,
                        "by_seed": {str(k): v for k, v in sorted(cell.scores.items())}})
        return out

    def text(self, task: str, column: str, fmt: str) -> str:
        cell = self.cells.get((task, column))
        if cell is None:
            return "-"
        return f"{cell.mean:{fmt}} ± {cell.std:{fmt}} (n={cell.n})"


def collect(experiment: str, tasks=(), methods=(), presets=()) -> Report:
    """Aggregate the store's finished evaluate runs, filtered by task, method and preset names."""
    from vgfcli.tracking import Store

    records = Store(experiment).find(stage="evaluate")  # newest first
    latest: dict[tuple, tuple] = {}  # (task, column, preset, chunk, seed) -> (score, metric), newest kept
    reference: dict[tuple, float] = {}
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
        rows = s["results"]
        task_key = task if chunk == 1 else f"{task} (H={chunk})"
        reference.setdefault((task_key, seed, preset), rows[0]["score"])
        settings = rows[1:] or rows[:1]  # a method without settings (bc) IS its reference row
        for row in settings:
            column = method if len(settings) == 1 else f"{method} {row['label']}"
            latest.setdefault((task_key, column, preset, seed), row["score"])
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

    for (task, column, preset, seed), score in latest.items():
        cells.setdefault((task, label(column, preset)), Cell()).scores[seed] = score
    for (task, seed, preset), score in reference.items():
        cells.setdefault((task, label("reference", preset)), Cell()).scores[seed] = score
    columns = sorted({c for _, c in cells}, key=lambda c: (not c.startswith("reference"), c))
    metric = metrics.pop() if len(metrics) == 1 else "score"
    return Report(metric, sorted({t for t, _ in cells}), columns, cells, used)


def rich_table(report: Report):
    from rich.table import Table

    fmt = ".3f" if report.metric == "success" else ".1f"
    table = Table(title=f"{report.metric}: mean ± std over seeds ({report.runs} evaluate runs)", title_justify="left")
    table.add_column("task", overflow="fold")
    for column in report.columns:
        table.add_column(column, justify="right")
    for task in report.tasks:
        table.add_row(task, *(report.text(task, c, fmt) for c in report.columns))
    return table


def markdown(report: Report) -> str:
    fmt = ".3f" if report.metric == "success" else ".1f"
    lines = [f"| task | {' | '.join(report.columns)} |", "|---" * (len(report.columns) + 1) + "|"]
    for task in report.tasks:
        lines.append(f"| {task} | {' | '.join(report.text(task, c, fmt) for c in report.columns)} |")
    return f"{report.metric}: mean ± std over seeds (n = seeds)\n\n" + "\n".join(lines) + "\n"


def csv_text(report: Report) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["task", "column", "metric", "mean", "std", "seeds"])
    for row in report.rows():
        writer.writerow([row["task"], row["column"], report.metric, f"{row['mean']:.6g}", f"{row['std']:.6g}",
                         row["seeds"]])
    return buffer.getvalue()


def bar_chart(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_tasks, n_cols = len(report.tasks), len(report.columns)
    width = 0.8 / max(n_cols, 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + n_tasks * n_cols * 0.35), 3.6), dpi=120)
    for j, column in enumerate(report.columns):
        xs, means, stds = [], [], []
        for i, task in enumerate(report.tasks):
            cell = report.cells.get((task, column))
            if cell is not None:
                xs.append(i + (j - (n_cols - 1) / 2) * width)
                means.append(cell.mean)
                stds.append(cell.std)
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=column)
    ax.set_xticks(range(n_tasks))
    ax.set_xticklabels(report.tasks, fontsize=7, rotation=10)
    ax.set_ylabel(report.metric.replace("_", " "))
    if report.metric == "success":
        ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=min(n_cols, 4))
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(report: Report, out_dir: Path) -> dict[str, Path]:
    """report.md, report.csv and report.png in ``out_dir``, each written atomically."""
    from vgfcli.cache import write_bytes_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv", "plot": out_dir / "report.png"}
    write_bytes_atomic(paths["markdown"], markdown(report).encode())
    write_bytes_atomic(paths["csv"], csv_text(report).encode())
    bar_chart(report, paths["plot"])
    return paths
