"""The one error type metasym raises for bad input and bad configuration."""

__all__ = ["MetasymError"]


class MetasymError(ValueError):
    """Bad input or configuration; the message names the offending value and what is valid."""
