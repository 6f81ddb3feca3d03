"""The manyruns version (one place: the package, the store attributes and the CLI read it here)."""

__version__ = "0.1.0"
