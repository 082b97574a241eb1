"""mpsearch: per-layer mixed-precision search (INT, minifloat, block formats) and TVM deployment.

Data flows one way: Task -> LayerGraph -> SensitivityTable -> CostTable -> Plan -> Artifact.
Only ``mpsearch.pipeline`` and ``mpsearch.cli`` import the ``sensitivity`` and ``backends`` packages.
"""

__version__ = "0.1.0"
