"""Portico's data plane: an ASGI gateway that imports nothing from Django."""

__version__ = "0.1.0"
