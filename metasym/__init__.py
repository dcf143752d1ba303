"""metasym: discover symmetries by meta-learning weight sharing (arXiv 2007.02933)."""

from metasym.errors import MetasymError

__all__ = ["MetasymError"]
__version__ = "0.1.0"
