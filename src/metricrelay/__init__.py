"""metricrelay: a durable relay of training metrics to SAP AI Core."""

__version__ = "0.1.0"

from metricrelay.producer.async_emitter import AsyncEmitter
from metricrelay.producer.emitter import BufferFull, Emitter
from metricrelay.producer.points import PointError

__all__ = ["AsyncEmitter", "BufferFull", "Emitter", "PointError", "__version__"]
