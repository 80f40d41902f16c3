"""Text that fits its figure: titles wrapped to the figure's width instead of cut off at its edge."""

from __future__ import annotations

import textwrap


def fit_title(ax, title: str, fontsize: float = 9) -> None:
    """``ax.set_title`` with ``title`` wrapped at word boundaries to the figure's width (an average
    glyph is about 0.6 em wide; a long env id or method list then takes two lines, never the margin)."""
    width_pt = ax.figure.get_figwidth() * 72.0
    chars = max(20, int(width_pt / (0.6 * fontsize)) - 4)
    ax.set_title("\n".join(textwrap.wrap(title, chars, break_long_words=False)) or title, fontsize=fontsize)
