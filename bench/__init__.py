"""metricrelay's benchmark harnesses; ``python -m bench`` (``make bench``) runs the standard set."""
