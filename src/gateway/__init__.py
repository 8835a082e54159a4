"""Live Room Gateway: Tencent Live Engine rooms behind one budgeted, cached, signed API."""

__version__ = "0.1.0"
