"""95 % intervals for scores made of per-episode outcomes, as papers report them.

- One evaluation row (one seed): a success rate gets the Wilson score interval of its episodes; a
  return or normalised score the normal interval of the episode mean (mean +- 1.96 s / sqrt(n)).
- A cell of several seeds (``vgf report``): a hierarchical bootstrap, the seeds resampled with
  replacement and each drawn seed's episodes resampled too, so both the spread between training
  seeds and the finite number of episodes count. The family mean over tasks resamples each task
  independently and averages the replicates. Resampling uses a fixed seed: the same runs give the
  same table.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_REPLICATES = 4000


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends (rounding would leave 0 / n a lower bound of ~1e-18 above its own mean)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return (low, high)


def episode_interval(outcomes, binary: bool) -> tuple[float, float]:
    """95 % interval of the mean of one row's per-episode outcomes."""
    x = np.asarray(outcomes, dtype=np.float64)
    if x.size == 0:
        return (float("nan"), float("nan"))
    if binary:
        return wilson(float(x.sum()), int(x.size))
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(x.size) if x.size > 1 else 0.0
    return (float(x.mean()) - half, float(x.mean()) + half)


def bootstrap_mean(per_seed: list[np.ndarray], replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> np.ndarray:
    """``[replicates]`` bootstrap means over seeds of the per-seed episode means (hierarchical: seeds,
    then episodes within each drawn seed). A seed given as one number (no episodes kept) counts as
    its own fixed mean."""
    rng = np.random.default_rng(seed)
    arrays = [np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in per_seed]
    k = len(arrays)
    picks = rng.integers(0, k, size=(replicates, k))                      # which seeds each replicate draws
    # every seed's episode-resampled means, one per replicate and draw slot
    resampled = np.empty((k, replicates, k))
    for s, a in enumerate(arrays):
        idx = rng.integers(0, a.size, size=(replicates, k, a.size))
        resampled[s] = a[idx].mean(-1)
    rows = np.arange(replicates)[:, None]
    slots = np.arange(k)[None, :]
    return resampled[picks, rows, slots].mean(1)


def percentile_interval(replicates: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return (float(lo), float(hi))
