"""metricrelay: a durable relay of training metrics to SAP AI Core."""

__version__ = "0.1.0"

from metricrelay.producer.emitter import AsyncEmitter, BufferFull, Emitter
from metricrelay.producer.points import PointError

__all__ = ["AsyncEmitter", "BufferFull", "Emitter", "PointError", "__version__"]
