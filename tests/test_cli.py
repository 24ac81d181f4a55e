"""The metricrelay program: subcommands, exit codes, and the offline demo."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from metricrelay.cli import main


def test_validate_reports_each_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "fragments.jsonl"
    source.write_bytes(
        b'{"executionId":"exec-1","metrics":[{"name":"Error Rate","value":1},'
        b'{"name":"x","value":true}]}\n\nnot json\n'
    )
    assert main(["validate", str(source)]) == 1
    out = capsys.readouterr()
    assert "line 1: metrics[1].value: must be a number, not a boolean" in out.out
    assert "line 3: entry: invalid JSON" in out.out
    assert "1 valid item(s), 2 problem(s)" in out.err


def test_validate_accepts_a_clean_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "ok.jsonl"
    source.write_bytes(b'{"executionId":"exec-1","tags":[{"name":"a","value":"b"}]}\n')
    assert main(["validate", str(source)]) == 0


@pytest.mark.integration  # the demo: redis-server, the API, workers
def test_demo_runs_end_to_end_at_small_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--executions", "2", "--ranks", "2", "--steps", "60", "--step-ms", "1"]
    assert main([*argv, "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "demo-run-00" in out and "demo-run-01" in out
    assert "stored 480 of 480 points logged" in out
    assert "dead letters: ['invalid']" in out
    assert "viewer: http://127.0.0.1:" in out
    assert (tmp_path / "demo" / "worker-1.log").exists()


def test_console_script_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "metricrelay", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("metricrelay ")


def test_unknown_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["nope"])
    assert exit_info.value.code == 2


@pytest.mark.integration  # the demo: redis-server, the API, workers
def test_demo_keep_stays_up_until_ctrl_c_and_then_stops_everything(tmp_path: Path) -> None:
    argv = ["--executions", "1", "--ranks", "1", "--steps", "20", "--step-ms", "0", "--keep"]
    process = subprocess.Popen(
        [sys.executable, "-m", "metricrelay", "demo", *argv, "--dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    for line in process.stdout:  # bounded: the demo prints the viewer line, or exits
        if line.startswith(b"--keep"):
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    log = (tmp_path / "d" / "worker-1.log").read_text()
    assert "worker stopped" in log  # the worker was drained and stopped, not left behind


@pytest.mark.integration  # the demo: redis-server, the API, workers
def test_demo_with_a_relative_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # what `make run` does: --dir .demo, relative to the checkout
    argv = ["demo", "--executions", "1", "--ranks", "1", "--steps", "10", "--step-ms", "0"]
    assert main([*argv, "--dir", ".demo"]) == 0
    assert (tmp_path / ".demo" / "redis" / "redis.log").exists()
