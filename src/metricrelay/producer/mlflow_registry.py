"""The ingest's memory of MLflow experiments and runs: just enough for the client's get/update.

Nothing here is durable, and nothing needs to be: the run id IS the AI Core execution id, so a
run the ingest has not seen (it restarted, or another replica created it) is adopted on first use
instead of refused — a job's logging never breaks because the ingest restarted. What is lost on
a restart is the merged params object: the next params write starts a new one.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from metricrelay.models import EXECUTION_ID_PATTERN
from metricrelay.producer.mlflow_errors import MlflowError, invalid

__all__ = ["DEFAULT_EXPERIMENT", "Experiment", "Registry", "Run", "run_status"]

DEFAULT_EXPERIMENT: Final = "0"
_DEFAULT_NAME: Final = "Default"
_EXECUTION_ID: Final = re.compile(EXECUTION_ID_PATTERN)
# Run statuses of MLflow's RunStatus enum, by their proto numbers (a client may send either).
_STATUSES: Final = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Experiment:
    experiment_id: str
    name: str
    created_ms: int
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "experiment_id": self.experiment_id,
            "name": self.name,
            "artifact_location": f"mlflow-artifacts:/{self.experiment_id}",
            "lifecycle_stage": "active",
            "creation_time": self.created_ms,
            "last_update_time": self.created_ms,
            "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
        }


@dataclass
class Run:
    run_id: str
    experiment_id: str
    start_ms: int
    name: str = ""
    user_id: str = ""
    status: str = "RUNNING"
    end_ms: int | None = None
    tags: dict[str, str] = field(default_factory=dict)  # as MLflow named them, for get
    params: dict[str, str] = field(default_factory=dict)  # merged over every params write
    # Held from merging a write until its XADD returned: stream order is merge order, so the
    # last params object in the stream is the most complete one.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dropped: dict[str, int] = field(default_factory=dict)  # non-finite values by metric name

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "run_id": self.run_id,
            "run_uuid": self.run_id,
            "run_name": self.name,
            "experiment_id": self.experiment_id,
            "user_id": self.user_id,
            "status": self.status,
            "start_time": self.start_ms,
            "artifact_uri": f"mlflow-artifacts:/{self.experiment_id}/{self.run_id}/artifacts",
            "lifecycle_stage": "active",
        }
        if self.end_ms is not None:
            info["end_time"] = self.end_ms
        return info

    def to_json(self) -> dict[str, Any]:
        """The run as runs/get answers it; metrics are relayed, not kept, so none are listed."""
        data = {
            "metrics": [],
            "params": [{"key": k, "value": v} for k, v in self.params.items()],
            "tags": [{"key": k, "value": v} for k, v in self.tags.items()],
        }
        return {"info": self.info(), "data": data, "inputs": {}}


def run_status(status: object) -> str:
    """A run status as MLflow sends it (its name, or its number in the proto enum), checked."""
    if isinstance(status, int) and 1 <= status <= len(_STATUSES):
        status = _STATUSES[status - 1]
    if status not in _STATUSES:
        raise invalid(f"status must be one of {', '.join(_STATUSES)}: {status!r}")
    assert isinstance(status, str)
    return status


class Registry:
    """Experiments by id and name (``"0"`` is ``Default``), runs by id."""

    def __init__(self) -> None:
        self._experiments: dict[str, Experiment] = {}
        self._names: dict[str, str] = {}
        self._runs: dict[str, Run] = {}
        self._add_experiment(DEFAULT_EXPERIMENT, _DEFAULT_NAME, {})

    def _add_experiment(self, experiment_id: str, name: str, tags: dict[str, str]) -> Experiment:
        experiment = Experiment(experiment_id, name, _now_ms(), tags)
        self._experiments[experiment_id] = experiment
        self._names[name] = experiment_id
        return experiment

    def experiment(self, experiment_id: str) -> Experiment:
        try:
            return self._experiments[experiment_id]
        except KeyError:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST", f"No Experiment with id={experiment_id} exists"
            ) from None

    def experiment_by_name(self, name: str) -> Experiment:
        experiment_id = self._names.get(name)
        if experiment_id is None:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST", f"Could not find experiment with name '{name}'"
            )
        return self._experiments[experiment_id]

    def create_experiment(self, name: str, tags: dict[str, str]) -> Experiment:
        if name in self._names:
            raise MlflowError("RESOURCE_ALREADY_EXISTS", f"Experiment(name={name}) already exists.")
        return self._add_experiment(str(len(self._experiments)), name, tags)

    def create_run(self, run_id: str | None, experiment_id: str, start_ms: int | None) -> Run:
        """A new run; ``run_id`` (the ingest's execution id) fixes its id, else a fresh one.

        A second run on a fixed id continues the first one's params: both write to the same
        execution, whose ``parameters`` item must keep holding all of them.
        """
        self.experiment(experiment_id)
        run_id = run_id or uuid.uuid4().hex
        earlier = self._runs.get(run_id)
        run = Run(run_id, experiment_id, _now_ms() if start_ms is None else start_ms)
        if earlier is not None:
            run.params, run.lock = earlier.params, earlier.lock
        self._runs[run_id] = run
        return run

    def run(self, run_id: str) -> Run:
        """The run, adopted into experiment ``0`` if unknown but a valid execution id."""
        run = self._runs.get(run_id)
        if run is not None:
            return run
        if not _EXECUTION_ID.match(run_id):
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST",
                f"Run '{run_id}' not found (a run id is an AI Core execution id: 4-64 "
                "letters, digits, '_', '.' or '-')",
            )
        run = self._runs[run_id] = Run(run_id, DEFAULT_EXPERIMENT, _now_ms())
        return run
