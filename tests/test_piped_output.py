"""What a CI log shows: tables drawn whole when stdout is a pipe, and plot titles inside their figure."""

import json
import os
import re
import subprocess
import sys

from vgfcli.cli import app  # noqa: F401  (the package imports; the commands run in a child process)


def _vgf(*args: str, home, columns: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["VGF_HOME"] = str(home)
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "vgfcli", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_evaluate_and_runs_print_every_number_whole_into_a_pipe(vgf_home):
    args = ["preset=smoke", "threads=1", "evaluate.budgets=[0,1,2,3]", "evaluate.episodes=3"]
    made = _vgf("pipeline", *args, "--json", home=vgf_home)
    assert made.returncode == 0, made.stderr[-2000:]
    rows = json.loads(made.stdout)["results"]
    table = _vgf("evaluate", *args, home=vgf_home)  # a cache hit: the same table, now to a pipe
    assert table.returncode == 0, table.stderr[-2000:]
    out = table.stdout
    assert "…" not in out and "..." not in out
    for row in rows:  # each row's score and interval, as the table formats them, on one line
        lo, hi = row["interval"]
        line = next(line for line in out.splitlines() if f" {row['label']} " in line)
        assert f"{row['success']:.3f}" in line and f"[{lo:.3f}, {hi:.3f}]" in line, line
    runs = _vgf("runs", "--limit", "10", home=vgf_home)
    assert runs.returncode == 0 and "…" not in runs.stdout
    metrics = re.findall(r"([a-z_]+)=(-?[0-9.e+-]+)", runs.stdout)
    assert metrics and all(float(value) == float(value) for _, value in metrics)  # each a whole number
    assert any(name == "transitions" for name, _ in metrics)
    narrow = _vgf("runs", "--limit", "10", home=vgf_home, columns="60")  # COLUMNS is honoured
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60


def test_plot_titles_stay_inside_their_figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vgfcli.plots import fit_title

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    fit_title(ax, "vgf on cube-single-singletask-task2-v0 (30 episodes per row, seed 0, quick preset): "
                  "success rate vs test-time budget L")
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    box, frame = ax.title.get_window_extent(renderer), fig.bbox
    assert box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y1 <= frame.y1
    plt.close(fig)
