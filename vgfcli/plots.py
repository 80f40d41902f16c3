"""Every figure vgf draws: evaluate's scaling charts, the value calibration, finetune's learning curves
and the report's bar chart, with the helpers they share (titles that fit, atomic PNG writes).

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically: a reader
never sees half a PNG. Plots of counts and scores are the same bytes for the same inputs.
"""

from __future__ import annotations

import io
import textwrap

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported when a figure is drawn: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path, **savefig_kwargs) -> None:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    from vgfcli.cache import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    pyplot().close(fig)
    write_bytes_atomic(path, buf.getvalue())


def fit_title(ax, title: str, fontsize: float = 9) -> None:
    """``ax.set_title`` with ``title`` wrapped at word boundaries to the figure's width (an average
    glyph is about 0.6 em wide; a long env id or method list then takes two lines, never the margin)."""
    width_pt = ax.figure.get_figwidth() * 72.0
    chars = max(20, int(width_pt / (0.6 * fontsize)) - 4)
    ax.set_title("\n".join(textwrap.wrap(title, chars, break_long_words=False)) or title, fontsize=fontsize)


# --- vgf evaluate ------------------------------------------------------------------------------------

def network_passes(row: dict) -> float:
    """Critic forward + backward and gradient-field passes per action: the x of the scaling chart."""
    cost = row.get("compute", {})
    return float(cost.get("critic_evals", 0.0) + cost.get("field_forward", 0.0))


SWEEP_AXES = {"budget": "test-time budget L (transport steps)", "guidance": "guidance weight w"}


def plot_scores(results: list[dict], sweep_keys: list[str], path, title: str, metric: str) -> None:
    """Score against the swept knob (one line), the reference as a dashed line; bars when nothing is swept."""
    plt = pyplot()
    rows = [r for r in results[1:] if len(sweep_keys) != 1 or _is_number(r["sweep"].get(sweep_keys[0]))]
    adaptive = [r for r in results[1:] if r not in rows]  # named budgets: drawn at their mean steps
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    if len(sweep_keys) == 1 and rows:
        key = sweep_keys[0]
        xs = [r["sweep"][key] for r in rows]
        ax.errorbar(xs, [r["score"] for r in rows], yerr=_yerr(rows), marker="o", capsize=3,
                    label=f"N = {rows[0]['particles']} particles (95 % interval over episodes)")
        for r, marker in zip(adaptive, "s^vDP*"):
            ax.errorbar([r["compute"].get("steps_mean", 0.0)], [r["score"]], yerr=_yerr([r]), marker=marker,
                        linestyle="none", capsize=3, label=f"{r['label']} at its mean steps")
        ax.set_xlabel(SWEEP_AXES.get(key, key))
        ax.set_xticks(xs)
        ax.axhline(results[0]["score"], color="grey", linestyle="--", label="reference policy (N = 1)")
        ax.legend(fontsize=8)
    else:
        ax.bar([r["label"] for r in results], [r["score"] for r in results], yerr=_yerr(results), capsize=3,
               color=["grey"] + ["tab:blue"] * len(rows))
    ax.set_ylabel(metric.replace("_", " "))
    if metric == "success":
        ax.set_ylim(-0.02, 1.02)  # rates: keep the scale honest when all scores are close
    fit_title(ax, title)
    fig.tight_layout()
    save_png(fig, path)


def plot_score_vs_compute(results: list[dict], path, title: str, metric: str) -> None:
    """The test-time scaling chart: every row's score (95 % interval) against its network passes per
    action (critic forward + backward, field forwards), each point labelled, the reference at 0. Counts,
    not timings: the chart is the same bytes for the same inputs (actions/s are in the table)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    xs = [network_passes(r) for r in results]
    ax.errorbar(xs, [r["score"] for r in results], yerr=_yerr(results), marker="o", linestyle="none", capsize=3)
    for i, (x, r) in enumerate(zip(xs, results)):  # staggered: rows of equal cost share a point
        ax.annotate(r["label"], (x, r["score"]), fontsize=6, textcoords="offset points", xytext=(4, 4 + 7 * (i % 3)))
    ax.set_xlabel("critic (+ field) passes per action")
    ax.set_ylabel(metric.replace("_", " "))
    if metric == "success":
        ax.set_ylim(-0.02, 1.02)
    fit_title(ax, f"{title}: score vs compute")
    fig.tight_layout()
    save_png(fig, path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yerr(rows: list[dict]) -> list[list[float]]:
    """Asymmetric error bars from each row's interval (never negative: matplotlib refuses them, and
    an interval from another estimator may sit a rounding error off its row's mean)."""
    return [[max(0.0, r["score"] - r["interval"][0]) for r in rows],
            [max(0.0, r["interval"][1] - r["score"]) for r in rows]]


def plot_lm_rows(rows: list[dict], path, title: str) -> None:
    """`vgf evaluate domain=llm`: mean reward (95 % interval over prompts) against the budget L, the
    judge's win rate on a second axis where a judge scored, the reference sample as a dashed line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    fixed = [r for r in rows if str(r["budget"]).isdigit()]
    xs = [int(r["budget"]) for r in fixed]

    def err(rs, key):
        return [[max(0.0, r[key] - r[f"{key}_ci"][0]) for r in rs], [max(0.0, r[f"{key}_ci"][1] - r[key]) for r in rs]]

    ax.errorbar(xs, [r["reward"] for r in fixed], yerr=err(fixed, "reward"), marker="o", capsize=3,
                label="reward R (best of N after L steps)")
    matched = [r for r in rows if "as_budget" in r]
    if matched:  # best-of-n at the same reward passes as the L row it stands beside
        ax.errorbar([r["as_budget"] for r in matched], [r["reward"] for r in matched], yerr=err(matched, "reward"),
                    marker="x", capsize=3, color="tab:purple", label="best-of-n at that L's reward passes")
    others = [r for r in rows if r not in fixed and r not in matched and r["row"] != "reference"]
    for r, marker in zip(others, "s^vD<>"):
        ax.errorbar([r["steps"]], [r["reward"]], yerr=err([r], "reward"), marker=marker, linestyle="none",
                    capsize=3, color="tab:green", label=f"{r['row']} at its mean steps")
    ax.axhline(rows[0]["reward"], color="grey", linestyle="--", label="reference sample")
    ax.set_xlabel("test-time budget L (transport steps)")
    ax.set_ylabel("reward (R)")
    ax.set_xticks(xs)
    if all("judge_win" in r for r in fixed):
        twin = ax.twinx()
        twin.errorbar(xs, [r["judge_win"] for r in fixed], yerr=err(fixed, "judge_win"), marker="s", capsize=3,
                      color="tab:orange", label="judge win rate vs reference")
        twin.set_ylabel("judge win rate", color="tab:orange")
        twin.set_ylim(-0.02, 1.02)
        twin.legend(fontsize=7, loc="lower right")
    ax.legend(fontsize=7, loc="upper left")
    fit_title(ax, title)
    fig.tight_layout()
    save_png(fig, path)


# --- value checks (vgf evaluate) ----------------------------------------------------------------------

def plot_calibration(rows: list[dict], pairs: list[np.ndarray], path, title: str, max_points: int = 3000) -> None:
    """Q against the realised discounted return, one colour per row, with the y = x line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    lo, hi = np.inf, -np.inf
    rng = np.random.default_rng(0)
    for row, qg in zip(rows, pairs):
        if len(qg) == 0:
            continue
        shown = qg if len(qg) <= max_points else qg[rng.choice(len(qg), max_points, replace=False)]
        check = row.get("value_check", {})
        ax.scatter(shown[:, 1], shown[:, 0], s=4, alpha=0.4,
                   label=f"{row['label']} (r = {check.get('corr', float('nan')):.2f})")
        lo, hi = min(lo, qg.min()), max(hi, qg.max())
    if np.isfinite(lo):
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="Q = return")
    ax.set_xlabel("discounted return that followed")
    ax.set_ylabel("Q at the executed action")
    fit_title(ax, title)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    save_png(fig, path, dpi=110, metadata={"Software": None})


# --- vgf finetune ------------------------------------------------------------------------------------

def plot_curves(curves: list[dict], path, title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    steps = [c["step"] for c in curves]
    for i, first in enumerate(curves[0]["rows"]):
        scores = np.array([c["rows"][i]["score"] for c in curves])
        lo = np.array([c["rows"][i]["interval"][0] for c in curves])
        hi = np.array([c["rows"][i]["interval"][1] for c in curves])
        ax.plot(steps, scores, marker="o", label=first["label"])
        ax.fill_between(steps, lo, hi, alpha=0.15)
    ax.set_xlabel("online env steps")
    ax.set_ylabel(curves[0]["rows"][0]["metric"])
    fit_title(ax, title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=110, metadata={"Software": None})


# --- vgf report -------------------------------------------------------------------------------------

def curves_chart(curves, path) -> None:
    """``vgf report --curves``: a panel per evaluate row, a line per curve (mean over seeds against online
    steps) with its 95 % interval shaded."""
    plt = pyplot()
    labels = sorted(curves.curves)
    rows = list(dict.fromkeys(r for c in labels for r in curves.curves[c]))
    fig, axes = plt.subplots(1, len(rows), figsize=(3.4 * len(rows) + 0.6, 3.4), dpi=110, sharey=True, squeeze=False)
    for ax, row in zip(axes[0], rows):
        for label in labels:
            points = sorted(curves.curves[label].get(row, {}).items())
            if not points:
                continue
            steps = [s for s, _ in points]
            means = [c.mean * curves.scale for _, c in points]
            bounds = [c.interval or (c.mean, c.mean) for _, c in points]
            line, = ax.plot(steps, means, marker="o", markersize=3, label=label)
            ax.fill_between(steps, [b[0] * curves.scale for b in bounds], [b[1] * curves.scale for b in bounds],
                            alpha=0.15, color=line.get_color())
        fit_title(ax, row)
        ax.set_xlabel("online env steps")
    axes[0][0].set_ylabel(f"{curves.unit}, 95 % interval")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, metadata={"Software": None})


def bar_chart(report, path) -> None:
    """The report's bar chart: one bar per (task, column), its 95 % interval as the error bar."""
    plt = pyplot()
    n_tasks, n_cols = len(report.tasks), len(report.columns)
    width = 0.8 / max(n_cols, 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + n_tasks * n_cols * 0.35), 3.6), dpi=120)
    for j, column in enumerate(report.columns):
        xs, means, low, high = [], [], [], []
        for i, task in enumerate(report.tasks):
            cell = report.cells.get((task, column))
            if cell is not None:
                xs.append(i + (j - (n_cols - 1) / 2) * width)
                mean = cell.mean * report.scale
                lo, hi = [v * report.scale for v in cell.interval] if cell.interval else (mean, mean)
                means.append(mean)
                low.append(mean - lo)
                high.append(hi - mean)
        ax.bar(xs, means, width, yerr=[low, high], capsize=2, label=column)
    ax.set_xticks(range(n_tasks))
    ax.set_xticklabels(report.tasks, fontsize=7, rotation=10)
    ax.set_ylabel(f"{report.unit}, 95 % interval")
    if report.metric == "success":
        ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=min(n_cols, 4))
    fig.tight_layout()
    save_png(fig, path)
