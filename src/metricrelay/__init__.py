"""metricrelay: a durable relay of training metrics to SAP AI Core."""

__version__ = "0.1.0"
