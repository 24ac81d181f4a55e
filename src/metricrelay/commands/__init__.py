"""Subcommands of the metricrelay program, one module each, each exposing ``register``."""
