"""vgf: behaviour-regularized offline RL with flow policies (VGF, QGF, QAM, FQL, BC)."""

__version__ = "0.1.0"
