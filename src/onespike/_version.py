"""The package version (a leaf module: the modules that record it import it from here)."""

__version__ = "0.1.0"
