"""twoway: code-first bi-directional record sync between business systems, as Prefect flows."""

__version__ = "0.1.0"
