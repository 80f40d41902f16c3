"""Transport budgets as users write them: ``--budget 0,1,auto``, ``evaluate.budgets``,
``online.explore_budget``. Parsed here once, without torch, so that the CLI can check ``--budget``
before it imports any method; ``vgfcli.nn.adaptive`` holds what the adaptive budgets do.
"""

from __future__ import annotations

from collections.abc import Iterable

# The named adaptive budgets: which stopping rules each applies (``vgfcli.nn.adaptive.StopRule``).
RULES = {"auto": ("disagreement", "gain"), "auto_std": ("disagreement",), "auto_gain": ("gain",)}


def parse_budgets(values: str | Iterable[int | str]) -> list[int | str]:
    """Budgets as numbers of transport steps L (int, >= 0) and adaptive budget names (``RULES``), in
    the order given. ``values``: a list (``evaluate.budgets``) or one comma-separated string
    (``--budget 0,1,auto``; empty entries are skipped). Raises ValueError naming the first entry that
    is neither, or when there is none."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    out: list[int | str] = []
    for value in values:
        text = str(value).strip()
        if text in RULES:
            out.append(text)
        elif text.isdigit():
            out.append(int(text))
        else:
            raise ValueError(f"budgets must be steps >= 0 or one of {', '.join(RULES)}, got {value!r}")
    if not out:
        raise ValueError(f"budgets must list at least one of: steps >= 0, {', '.join(RULES)}")
    return out


def explore_steps(budget: str | None, train_steps: int) -> int:
    """Transport steps of online exploration from ``online.explore_budget``: None -> 0 (the reference
    code's best-of-N), ``train`` -> L_train (``train_steps``), an integer string -> that L. Shared by
    VGF and A-VGF."""
    if budget is None:
        return 0
    if str(budget) == "train":
        return int(train_steps)
    try:
        steps = int(str(budget))
    except ValueError:
        steps = -1
    if steps < 0:
        raise ValueError(f"online.explore_budget must be null, train or an integer >= 0, got {budget!r}")
    return steps
