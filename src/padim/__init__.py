"""padim-toolkit: PaDiM anomaly detection (Defard et al. 2020, https://arxiv.org/abs/2011.08785)."""

__version__ = "0.1.0"
