"""``metricrelay view``: the run viewer against any AI API, through a read-only token proxy."""

from metricrelay.viewer.proxy import ApiProxy, describe_credential

__all__ = ["ApiProxy", "describe_credential"]
