"""`vgf evaluate domain=llm`'s table: one line per row, each mean with its 95 % interval over prompts."""

from __future__ import annotations

COLUMNS = (("reward", "reward R"), ("win", "win vs ref (R)"), ("judge", "judge"), ("judge_win", "judge win"),
           ("judge_win_data", "judge win vs data"),
           ("loglik", "loglik/token"), ("changed", "tokens changed"))


def _cell(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "-"
    low, high = row[f"{key}_ci"]
    return f"{row[key]:.3f} [{low:.3f}, {high:.3f}]"


def rows_table(summary: dict):
    from rich.table import Table

    which = "held-out" if summary.get("split", "val") == "val" else "TRAINING"
    table = Table(title=f"evaluate (lm): {summary.get('prompts')} {which} prompts, N={summary.get('particles')}, "
                        f"{summary.get('decode')} decoding, judge {summary.get('judge')}"
                        f"{' (the demo corpus gold rule)' if summary.get('judge_is_gold_rule') else ''}",
                        title_justify="left")
    table.add_column("row")
    for _, title in COLUMNS:
        table.add_column(title, justify="right", no_wrap=True)
    for title in ("KL (best-of-n)", "R fwd+bwd", "LM passes", "s/prompt"):
        table.add_column(title, justify="right")
    for row in summary.get("rows", []):
        passes = row.get("reward_forward", 0.0) + row.get("reward_backward", 0.0)
        kl = row.get("kl_best_of_n")
        table.add_row(row["row"], *(_cell(row, key) for key, _ in COLUMNS), "-" if kl is None else f"{kl:.2f}",
                      f"{passes:.0f}",
                      f"{row.get('policy_passes', 0.0):.0f}", f"{row.get('seconds', 0.0):.3f}")
    return table
