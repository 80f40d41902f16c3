"""Datasets: readers for OGBench, D4RL and Minari files, and the canonical format they all produce.

The readers live in their own modules (``ogbench_npz``, ``d4rl``, ``minari``) and import h5py,
gymnasium and ogbench only when called, so importing this package stays cheap.
"""

from vgfcli.data.canonical import Dataset, action_bounds, load, save, summarize, validate
from vgfcli.data.d4rl import read_d4rl_hdf5
from vgfcli.data.minari import read_minari
from vgfcli.data.ogbench_npz import ensure_ogbench_file, parse_ogbench_name, read_ogbench_npz

__all__ = [
    "Dataset", "action_bounds", "ensure_ogbench_file", "load", "parse_ogbench_name", "read_d4rl_hdf5",
    "read_minari", "read_ogbench_npz", "save", "summarize", "validate",
]
