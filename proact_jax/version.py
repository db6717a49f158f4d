"""The package version, importable from every layer (checkpoints record it)."""

__version__ = "0.1.0"
