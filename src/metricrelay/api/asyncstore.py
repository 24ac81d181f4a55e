"""The SQLite store behind one dedicated thread, so no query or write ever blocks the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from metricrelay.api.query import MetricQuery
from metricrelay.api.storage import MetricStore, PatchOutcome
from metricrelay.models import MetricResource

__all__ = ["AsyncStore"]

T = TypeVar("T")


class AsyncStore:
    """Awaitable front of :class:`MetricStore`.

    One thread owns the connection: SQLite serialises writers anyway, and a single owner needs
    no locking and keeps ``check_same_thread`` satisfied. Requests queue in the executor.
    """

    def __init__(self, executor: ThreadPoolExecutor, store: MetricStore) -> None:
        self._executor = executor
        self._store = store

    @classmethod
    async def open(cls, path: str) -> AsyncStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metricrelay-api-db")
        try:
            store = await asyncio.get_running_loop().run_in_executor(executor, MetricStore, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, store)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def patch(self, group: str, resource: MetricResource, now: str) -> PatchOutcome:
        return await self._run(functools.partial(self._store.patch, group, resource, now))

    async def query(self, group: str, query: MetricQuery) -> bytes:
        return await self._run(functools.partial(self._store.query, group, query))

    async def delete(self, group: str, execution_id: str) -> bool:
        return await self._run(functools.partial(self._store.delete, group, execution_id))

    async def executions(self, group: str | None) -> list[dict[str, Any]]:
        return await self._run(functools.partial(self._store.executions, group))

    async def close(self) -> None:
        """Close the connection on its own thread (WAL is checkpointed), then the thread."""
        try:
            await self._run(self._store.close)
        finally:
            self._executor.shutdown(wait=True)
