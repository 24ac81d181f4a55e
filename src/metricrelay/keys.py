"""Every Redis key name metricrelay uses, derived from one prefix: no key literal anywhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["CONSUMER_GROUP", "DEFAULT_PREFIX", "Keys"]

DEFAULT_PREFIX: Final = "metricrelay"
# CONTRACT.md §2.1 names the group `metricrelay` whatever the prefix: outside tools (XINFO,
# XPENDING dashboards) look for that name, and two prefixes never share a stream anyway.
CONSUMER_GROUP: Final = "metricrelay"


def _check_part(what: str, value: str) -> None:
    # Whitespace would make keys awkward to quote in redis-cli and in scripts.
    if not value or any(char.isspace() for char in value):
        raise ValueError(f"{what} must be non-empty and free of whitespace, got {value!r}")


@dataclass(frozen=True, slots=True)
class Keys:
    """The key names for one prefix, e.g. ``Keys().events == "metricrelay:events"``."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        _check_part("the key prefix", self.prefix)

    @property
    def events(self) -> str:
        """The event stream producers XADD to (CONTRACT.md §2.1)."""
        return f"{self.prefix}:events"

    @property
    def dead(self) -> str:
        """The dead-letter stream (CONTRACT.md §2.2)."""
        return f"{self.prefix}:dead"

    @property
    def group(self) -> str:
        """The consumer group on :attr:`events`; the same for every prefix."""
        return CONSUMER_GROUP

    def progress(self, resource_group: str, execution_id: str) -> str:
        """The hash that records delivery progress of one execution.

        Execution ids cannot contain ':' (CONTRACT.md: ``^[\\w.-]{4,64}$``), so splitting such a
        key at its last ':' gives the pair back even for a resource group that contains one.
        """
        _check_part("resource_group", resource_group)
        _check_part("execution_id", execution_id)
        return f"{self.prefix}:progress:{resource_group}:{execution_id}"
