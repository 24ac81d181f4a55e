"""Helpers shared by the tests and ``bench/``: import them as ``tests.support.<module>``.

Fixtures stay in the ``conftest.py`` files; what they share with test modules lives here, since
a test module cannot import a conftest (pytest runs with ``--import-mode=importlib``).
"""
