"""facetrip's version, in one place (the package, its checkpoints and its exports record it)."""

__version__ = "0.1.0"
