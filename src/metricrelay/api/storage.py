"""SQLite storage of metric resources, scoped by resource group; synchronous, one thread only.

Semantics: metrics append, and a point identical to a stored one — same name, step, timestamp
and labels (in the same order) — is stored once, the first value kept; tags and customInfo
upsert by name; a resource's ``createdAt`` is set once and ``modifiedAt`` on every PATCH.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

import orjson

from metricrelay.api.query import MetricQuery, TagFilter
from metricrelay.models import MetricResource

__all__ = ["MetricStore", "PatchOutcome"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY,
    resource_group TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    UNIQUE (resource_group, execution_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    resource_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    timestamp TEXT NOT NULL,
    step INTEGER,
    labels TEXT NOT NULL
);
-- A point's identity. IFNULL: NULLs never collide in a UNIQUE index, absent steps must.
-- Its resource_id prefix also serves the per-resource reads; a separate (resource_id) index
-- would spare their sort by id but costs ~8% on every write, the hot path.
CREATE UNIQUE INDEX IF NOT EXISTS metrics_identity
    ON metrics (resource_id, name, IFNULL(step, -1), timestamp, labels);
CREATE TABLE IF NOT EXISTS tags (
    resource_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS custom_info (
    resource_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_id, name)
) WITHOUT ROWID;
"""

_UPSERT_RESOURCE: Final = """
INSERT INTO resources (resource_group, execution_id, created_at, modified_at) VALUES (?, ?, ?, ?)
ON CONFLICT (resource_group, execution_id) DO UPDATE SET modified_at = excluded.modified_at
RETURNING id
"""
_INSERT_METRIC: Final = (
    "INSERT OR IGNORE INTO metrics (resource_id, name, value, timestamp, step, labels) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_NAMED: Final = (
    "INSERT INTO {table} (resource_id, name, value) VALUES (?, ?, ?) "
    "ON CONFLICT (resource_id, name) DO UPDATE SET value = excluded.value"
)
_TAG_CONDITIONS: Final = {
    "eq": "EXISTS (SELECT 1 FROM tags t WHERE t.resource_id = r.id AND t.name = ? AND t.value = ?)",
    "ne": "NOT EXISTS (SELECT 1 FROM tags t WHERE t.resource_id = r.id AND t.name = ? "
    "AND t.value = ?)",
    "exists": "EXISTS (SELECT 1 FROM tags t WHERE t.resource_id = r.id AND t.name = ?)",
}
_NO_LABELS: Final = "[]"


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """What one PATCH did: points received, stored (new) and already present."""

    received: int
    stored: int
    tags: int
    custom_info: int

    @property
    def duplicates(self) -> int:
        return self.received - self.stored


class MetricStore:
    """One SQLite connection; every method must be called from the thread that opened it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
        self._conn.execute("PRAGMA journal_mode = WAL")  # a no-op for :memory:
        self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL keeps this crash-safe
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: schema version {version}, expected {SCHEMA_VERSION}")
        self._conn.executescript(SCHEMA)
        self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def patch(self, group: str, resource: MetricResource, now: str) -> PatchOutcome:
        """Store one validated body in one transaction; ``now`` stamps points without a time."""
        # everything but the resource id is prepared before the transaction, to keep it short
        points = [
            (
                m["name"],
                m["value"],
                m.get("timestamp") or now,
                m.get("step"),
                orjson.dumps(m["labels"]).decode() if m.get("labels") else _NO_LABELS,
            )
            for m in resource.get("metrics", [])
        ]
        tags = [(t["name"], t["value"]) for t in resource.get("tags", [])]
        infos = [(c["name"], c["value"]) for c in resource.get("customInfo", [])]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            (rid,) = conn.execute(
                _UPSERT_RESOURCE, (group, resource["executionId"], now, now)
            ).fetchone()
            stored = 0
            if points:
                stored = conn.executemany(_INSERT_METRIC, [(rid, *p) for p in points]).rowcount
            for table, pairs in (("tags", tags), ("custom_info", infos)):
                if pairs:
                    conn.executemany(_UPSERT_NAMED.format(table=table), [(rid, *p) for p in pairs])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return PatchOutcome(len(points), stored, len(tags), len(infos))

    def delete(self, group: str, execution_id: str) -> bool:
        """Remove a resource with all its points, tags and customInfo; False if there was none."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "DELETE FROM resources WHERE resource_group = ? AND execution_id = ? RETURNING id",
                (group, execution_id),
            ).fetchone()
            if row is not None:
                for table in ("metrics", "tags", "custom_info"):
                    conn.execute(f"DELETE FROM {table} WHERE resource_id = ?", row)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return row is not None

    def query(self, group: str, query: MetricQuery) -> bytes:
        """The GET answer, already encoded: ``{"count": total, "resources": [page]}``."""
        where, params = _where(group, query)
        conn = self._conn
        (count,) = conn.execute(
            f"SELECT count(*) FROM resources r WHERE {where}", params
        ).fetchone()
        page = conn.execute(
            f"SELECT id, execution_id, created_at, modified_at FROM resources r WHERE {where} "
            "ORDER BY id LIMIT ? OFFSET ?",
            (*params, query.top, query.skip),
        ).fetchall()
        resources = [self._resource(row, query) for row in page]
        return orjson.dumps({"count": count, "resources": resources})

    def executions(self, group: str | None) -> list[dict[str, Any]]:
        """Every resource (of one group, or of all) with its tags: the viewer's index, no points."""
        where, params = ("WHERE resource_group = ?", (group,)) if group is not None else ("", ())
        rows = self._conn.execute(
            "SELECT id, resource_group, execution_id, created_at, modified_at FROM resources "
            f"{where} ORDER BY resource_group, id",
            params,
        ).fetchall()
        tags: dict[int, list[dict[str, str]]] = {}
        # one pass over the tags instead of one query per resource
        for rid, name, value in self._conn.execute(
            "SELECT t.resource_id, t.name, t.value FROM tags t "
            f"JOIN resources ON resources.id = t.resource_id {where} ORDER BY t.name",
            params,
        ):
            tags.setdefault(rid, []).append({"name": name, "value": value})
        return [
            {
                "resourceGroup": rgroup,
                "executionId": execution_id,
                "tags": tags.get(rid, []),
                "createdAt": created_at,
                "modifiedAt": modified_at,
            }
            for rid, rgroup, execution_id, created_at, modified_at in rows
        ]

    def _resource(self, row: tuple[Any, ...], query: MetricQuery) -> dict[str, Any]:
        rid, execution_id, created_at, modified_at = row
        out: dict[str, Any] = {"executionId": execution_id}
        if "metrics" in query.sections:
            out["metrics"] = [
                _metric(*m)
                for m in self._conn.execute(
                    "SELECT name, value, timestamp, step, labels FROM metrics "
                    "WHERE resource_id = ? ORDER BY id",
                    (rid,),
                )
            ]
        for section, table in (("tags", "tags"), ("customInfo", "custom_info")):
            if section in query.sections:
                out[section] = [
                    {"name": name, "value": value}
                    for name, value in self._conn.execute(
                        f"SELECT name, value FROM {table} WHERE resource_id = ? ORDER BY name",
                        (rid,),
                    )
                ]
        out["createdAt"] = created_at
        out["modifiedAt"] = modified_at
        return out


def _metric(name: str, value: float, timestamp: str, step: int | None, labels: str) -> Any:
    item: dict[str, Any] = {"name": name, "value": value, "timestamp": timestamp}
    if step is not None:
        item["step"] = step
    item["labels"] = orjson.Fragment(labels)  # stored as JSON already: no decode, no re-encode
    return item


def _where(group: str, query: MetricQuery) -> tuple[str, list[Any]]:
    clauses = ["r.resource_group = ?"]
    params: list[Any] = [group]
    if query.execution_ids is not None:
        clauses.append(f"r.execution_id IN ({', '.join('?' * len(query.execution_ids))})")
        params.extend(query.execution_ids)
    for tag in query.tag_filters:
        clauses.append(_TAG_CONDITIONS[tag.op])
        params.extend(_tag_params(tag))
    return " AND ".join(clauses), params


def _tag_params(tag: TagFilter) -> tuple[str, ...]:
    return (tag.name,) if tag.value is None else (tag.name, tag.value)
