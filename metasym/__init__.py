"""metasym: discover symmetries by meta-learning weight sharing (arXiv 2007.02933).

``metasym.load_layer(run_dir, snap=False)`` returns a run's discovered layer as an ``nn.Module``;
``metasym.analyze_run(run_dir)`` reads the symmetry out of its learned sharing.
"""

from typing import Any

from metasym.errors import MetasymError

__all__ = ["MetasymError", "analyze_run", "load_layer"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # imported on first use: the analysis pulls in torch, sympy and igraph
    if name in ("load_layer", "analyze_run"):
        from metasym import discovered

        return getattr(discovered, name)
    raise AttributeError(f"module 'metasym' has no attribute {name!r}")
