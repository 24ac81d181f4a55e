"""Fixtures of the reliability suite: a stack of real processes in the test's folder, a seeded
random source. ``METRICRELAY_CHAOS_SCALE`` (``make chaos``) multiplies the sizes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.stack import Stack

from metricrelay.devtools.embedded import RedisServer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with RedisServer(directory=tmp_path / "redis", appendonly="always") as server:
        built = Stack(tmp_path, server)
        yield built
        built.stop()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(int(os.environ.get("METRICRELAY_CHAOS_SEED", "7")))
