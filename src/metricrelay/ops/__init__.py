"""Operator tooling behind ``status``, ``replay`` and ``dead``: Redis in, plain data out."""
