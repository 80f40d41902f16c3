"""`vgf report --curves`: finished finetune runs' learning curves pooled over seeds, with 95 % intervals.

A curve is one (evaluation env, method, preset, build) over its seeds, the build being whether the reference flow
learned online (``online.train_reference``: "flow learns" / "flow frozen"). At each online step every
evaluate row (L = 0, 1, ..., the method's own rule) is a ``report.Cell``: the mean over seeds of the
row's score, with the same 95 % interval as ``vgf report``'s cells (seeds and episodes resampled; for
success rates at least the Wilson interval of the pooled episodes). A success point's episodes are
rebuilt from its score and episode count (k successes of n, exact for a 0/1 outcome); other metrics
count one value per seed. When one (task, method, preset, build, seed) was fine-tuned more than once,
the newest run counts.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vgfcli.errors import VgfError
from vgfcli.report import Cell, Units


@dataclass
class Curves(Units):
    metric: str
    curves: dict[str, dict[str, dict[int, Cell]]]  # curve label -> row label -> online step -> cell
    runs: int

    def rows(self) -> list[dict]:
        out = []
        for curve, rows in sorted(self.curves.items()):
            for row, points in rows.items():
                for step, cell in sorted(points.items()):
                    interval = cell.interval
                    out.append({"curve": curve, "row": row, "step": step, "mean": cell.mean * self.scale,
                                "ci95": [v * self.scale for v in interval] if interval else None, "seeds": cell.n,
                                "by_seed": {str(k): v * self.scale for k, v in cell.by_seed.items()}})
        return out


def _episodes(row: dict) -> np.ndarray:
    """A curve point's per-episode scores: k ones and n - k zeros for a success rate, else its mean."""
    if row.get("metric") == "success" and row.get("episodes"):
        n = int(row["episodes"])
        k = int(round(float(row["score"]) * n))
        return np.concatenate([np.ones(k), np.zeros(n - k)])
    return np.asarray([float(row["score"])])


def collect(experiment: str, tasks=(), methods=(), presets=()) -> Curves:
    """The store's finished finetune runs as curves, filtered by task, method and preset names."""
    from vgfcli.stats import bootstrap_mean
    from vgfcli.tracking import Store

    latest: dict[tuple, dict] = {}  # (curve label parts, seed) -> curves.json, newest first kept
    metrics, used = set(), 0
    for record in Store(experiment).find(stage="finetune"):  # newest first
        s = record.summary
        task, method, preset = s.get("env_id"), s.get("method"), s.get("preset")
        if not task or (tasks and task not in tasks) or (methods and method not in methods) \
                or (presets and preset not in presets):
            continue
        path = (record.output_paths() or {}).get("curves")
        try:
            data = json.loads(Path(path).read_text()) if path else None
        except (OSError, ValueError):
            data = None
        if not data or not data.get("curves"):
            continue
        used += 1
        build = "flow learns" if s.get("reference_trained_online") else "flow frozen"
        latest.setdefault((task, method, preset, build, int(s.get("seed", 0))), data)
    if not used:
        raise VgfError(f"no finished finetune runs in experiment '{experiment}' with these filters: run vgf "
                       "finetune (or vgf pipeline finetune=true) first")
    known = {key[2] for key in latest} - {None}
    if len(known) == 1:  # runs from before finetune recorded its preset count as the store's one preset
        latest = {(t, m, p or next(iter(known)), b, s): d for (t, m, p, b, s), d in latest.items()}
    multi = {k: len({key[i] for key in latest}) > 1 for i, k in enumerate(("task", "method", "preset"))}
    points: dict[str, dict[str, dict[int, Cell]]] = {}
    for (task, method, preset, build, seed), data in latest.items():
        parts = [task if multi["task"] else None, method, f"[{preset}]" if multi["preset"] else None, build]
        label = " ".join(p for p in parts if p)
        for point in data["curves"]:
            for row in point["rows"]:
                metrics.add(row["metric"])
                cell = points.setdefault(label, {}).setdefault(row["label"], {}).setdefault(int(point["step"]), Cell())
                cell.outcomes[seed] = _episodes(row)
    metric = metrics.pop() if len(metrics) == 1 else "score"
    i = 0
    for rows in points.values():
        for cells in rows.values():
            for cell in cells.values():
                cell.replicates = bootstrap_mean(list(cell.outcomes.values()), seed=i)
                cell.pooled = (float(sum(a.sum() for a in cell.outcomes.values())),
                               int(sum(a.size for a in cell.outcomes.values()))) if metric == "success" else None
                i += 1
    return Curves(metric, points, used)


def _text(cell: Cell, scale: float) -> str:
    interval = cell.interval
    ci = f" [{interval[0] * scale:.1f}, {interval[1] * scale:.1f}]" if interval else ""
    return f"{cell.mean * scale:.1f}{ci} (n={cell.n})"


def markdown(curves: Curves) -> str:
    """One table per evaluate row: online steps down, curves across."""
    labels = sorted(curves.curves)
    row_names = list(dict.fromkeys(r for c in labels for r in curves.curves[c]))
    out = [f"{curves.unit} against online steps: mean over seeds [95 % interval: seeds and episodes resampled; "
           "for success at least the pooled Wilson interval] (n = seeds)\n"]
    for row in row_names:
        steps = sorted({s for c in labels for s in curves.curves[c].get(row, {})})
        out += [f"\n{row}\n", f"| online step | {' | '.join(labels)} |", "|---" * (len(labels) + 1) + "|"]
        for step in steps:
            cells = [curves.curves[c].get(row, {}).get(step) for c in labels]
            out.append(f"| {step} | {' | '.join(_text(x, curves.scale) if x else '-' for x in cells)} |")
    return "\n".join(out) + "\n"


def csv_text(curves: Curves) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["curve", "row", "step", "unit", "mean", "ci95_low", "ci95_high", "seeds"])
    for r in curves.rows():
        low, high = r["ci95"] or ("", "")
        writer.writerow([r["curve"], r["row"], r["step"], curves.unit, f"{r['mean']:.6g}",
                         low if low == "" else f"{low:.6g}", high if high == "" else f"{high:.6g}", r["seeds"]])
    return buffer.getvalue()


def shown(curves: Curves) -> str:
    """What ``vgf report --curves`` prints."""
    return markdown(curves)


def write_outputs(curves: Curves, out_dir: Path) -> dict[str, Path]:
    """curves.md, curves.csv and curves.png in ``out_dir``, each written atomically."""
    from vgfcli.plots import curves_chart
    from vgfcli.report import write_files

    return write_files(out_dir, "curves", markdown(curves), csv_text(curves), lambda path: curves_chart(curves, path))
