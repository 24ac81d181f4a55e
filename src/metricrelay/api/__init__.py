"""The reference AI API metrics server: an aiohttp application over SQLite, with fault injection.

Kept light on purpose (the CLI imports it to build its parser): the application is in
:mod:`metricrelay.api.app`, the ways to run it in :mod:`metricrelay.api.server`.
"""

from metricrelay.api.config import ApiConfig, FaultConfig

__all__ = ["ApiConfig", "FaultConfig"]
