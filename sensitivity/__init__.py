"""Per-layer sensitivity: Hessian traces with error bars, eigenvalues, activation statistics, Omega table."""

from sensitivity.config import SensitivityConfig
from sensitivity.compute import compute_sensitivity

__all__ = ["SensitivityConfig", "compute_sensitivity"]
