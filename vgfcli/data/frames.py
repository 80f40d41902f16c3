"""A pixel dataset's frames read on demand, for frame arrays larger than memory.

The canonical file stores one frame per gzip chunk (``canonical.save``), so rows of a random batch are
read and inflated one chunk each; HDF5's chunk cache keeps recently read ones. Nothing but the rows
asked for is ever in memory. ``fits_in_memory`` says when to read the whole array instead (faster).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vgfcli.errors import VgfError


class FrameReader:
    """``reader[rows]`` -> uint8 ``[len(rows), H, W, C]``, in the order of ``rows``."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], cache_mb: int = 64):
        self.path, self.shape, self.cache_mb = Path(path), tuple(int(v) for v in shape), int(cache_mb)
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return self.shape[0]

    def _frames(self):
        import h5py

        if self._file is None or self._pid != os.getpid():  # an HDF5 handle must not cross a fork
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.cache_mb << 20, rdcc_nslots=100_003)
            self._pid = os.getpid()
        return self._file["frames"]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(rows, return_inverse=True)  # HDF5 reads increasing rows only
        try:
            block = self._frames()[unique]
        except (OSError, ValueError) as exc:
            raise VgfError(f"{self.path}: frames could not be read ({str(exc).strip() or type(exc).__name__})") \
                from None
        return block[inverse]

    def read_all(self) -> np.ndarray:
        """Every frame, into one array (no second copy on the way)."""
        try:
            return self._frames()[()]
        except (OSError, ValueError) as exc:
            raise VgfError(f"{self.path}: frames could not be read ({str(exc).strip() or type(exc).__name__})") \
                from None

    def __getstate__(self):  # pickled to a worker process without the open handle
        return {"path": self.path, "shape": self.shape, "cache_mb": self.cache_mb}

    def __setstate__(self, state):
        self.__init__(state["path"], state["shape"], state["cache_mb"])


def fits_in_memory(shape: tuple[int, ...], share: float = 0.5) -> bool:
    """Whether a uint8 array of ``shape`` takes at most ``share`` of the memory available now: the
    kernel's MemAvailable, which counts the page cache it can reclaim (free memory alone is small on
    a machine that has read a large file, such as the dataset just ingested)."""
    return int(np.prod(shape)) <= share * available_memory()


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux's MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: assume it fits
