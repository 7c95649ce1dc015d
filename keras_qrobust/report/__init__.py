"""RobustnessReport: JSON (versioned schema), Markdown and a self-contained HTML page.

The plots (matplotlib, embedded as PNG data URIs): accuracy vs ε per model (Zhou 2022
Fig. 6-10), accuracy vs weight bits per ε with the critical attack strength marked
(Gorsline 2021 Fig. 3), relative accuracy vs the geometric lower bound (Fig. 4/7),
σ_max(Q(W) − W) per layer (Song 2020 Fig. 3-4) and the UAP transfer matrix as a heat map —
each when the report has the data it needs.
"""

from .robustness_report import RobustnessReport
from .schema import SCHEMA, SCHEMA_VERSION, WARNINGS, validate

__all__ = ["RobustnessReport", "SCHEMA", "SCHEMA_VERSION", "validate", "WARNINGS"]
