"""Secrets stay out of every output; TLS is verified by default; rediss:// works (scenario 7)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from tests.support.waiting import until_sync

from metricrelay.codec import EncodedFragment
from metricrelay.deadletter import Reason
from metricrelay.devtools.demo_stack import start_worker
from metricrelay.devtools.embedded import find_redis_server, free_port
from metricrelay.relay.batching import Coalescer
from metricrelay.relay.dispatch import Dispatcher
from metricrelay.retry import RetryPolicy

SECRET = "client-s3cret-9f8e7d"
SRC = Path(__file__).resolve().parents[2] / "src"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "1", "-subj", "/CN=metricrelay-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1",
            "-extfile", "ext.cnf")  # fmt: skip
    return {name: folder / f"{name}.crt" for name in ("ca", "server")} | {
        "key": folder / "server.key"
    }


def answers(client: redis.Redis) -> bool:
    """Whether the server answers a PING (False while it is starting)."""
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_no_code_path_turns_tls_verification_off() -> None:
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for switch in ("ssl=False", "verify_ssl=False", "CERT_NONE", "ssl_cert_reqs"):
            assert switch not in text, f"{path} contains {switch}"


@pytest.mark.integration  # an HTTPS server
async def test_the_dispatcher_refuses_an_untrusted_https_api(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["server"], certs["key"])
    app = web.Application()

    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_route("PATCH", "/v2/lm/metrics", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    coalescer = Coalescer()
    coalescer.add("1-0", EncodedFragment("g", "exec-tls", [b'{"name":"m","value":1.0}']), 0.0)
    [body] = coalescer.flush()

    class Tokens:
        async def headers(self) -> dict[str, str]:
            return {"Authorization": "Bearer t"}

        async def invalidate(self, rejected: dict[str, str]) -> None:
            return None

    async def no_sleep(delay: float) -> None:
        await asyncio.sleep(0)

    try:
        async with aiohttp.ClientSession() as session:  # as the worker builds it: defaults
            dispatcher = Dispatcher(
                session, f"https://127.0.0.1:{port}/v2/lm/metrics", Tokens(),
                RetryPolicy(0.01, 0.01, 0.0, 0.0), timeout=5, sleep=no_sleep,
            )  # fmt: skip
            delivery = await dispatcher.deliver(body)
    finally:
        await runner.cleanup()
    [failure] = delivery.failures
    assert failure.reason is Reason.EXHAUSTED
    assert "CERTIFICATE_VERIFY_FAILED" in failure.error


@pytest.mark.integration  # redis-server with TLS, the reference API, a worker process
def test_rediss_urls_work_and_verify_the_server(tmp_path: Path, stack: Any) -> None:
    certs = make_certificates(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(certs["server"]), "--tls-key-file", str(certs["key"]),
         "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certs['ca']}"
    try:
        client = redis.Redis.from_url(url, retry_on_timeout=True)
        until_sync(lambda: answers(client), timeout=10, what="redis-server with TLS is up")
        with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            redis.Redis.from_url(f"rediss://127.0.0.1:{port}/0").ping()  # untrusted: refused
        stack.start_api()
        client.xadd(
            "metricrelay:events",
            {"resource": b'{"executionId":"tls-01","metrics":[{"name":"m","value":1,"step":1}]}'},
        )
        worker = start_worker(
            stack.folder, 1, url, stack.api_url, burst=True, METRICRELAY_LINGER="0.05"
        )
        stack.workers.append(worker)  # stopped with the stack, whatever happens
        assert worker.process.wait(60) == 0, worker.log_text()[-2000:]
        written = {stack.identity("tls-01", {"name": "m", "step": 1})}
        audit = stack.audit(written, ["tls-01"])
        assert not audit.missing and audit.dead == {}
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.integration  # a real redis-server, the reference API, a worker process
def test_secrets_are_absent_from_logs_dead_letters_and_status(stack: Any) -> None:
    stack.api_args = ("--client-id", "relay", "--client-secret", SECRET, "--expires-in", "1",
                      "--reject-names", "^poison")  # fmt: skip
    url = stack.start_api()
    stack.xadd_points("sec-01", range(500), per_entry=50)
    stack.xadd_points("sec-01", range(1000, 1003), per_entry=1, name="poison_x")
    env = {"METRICRELAY_TOKEN": "", "METRICRELAY_AUTH_URL": f"{url}/oauth/token",
           "METRICRELAY_CLIENT_ID": "relay", "METRICRELAY_CLIENT_SECRET": SECRET,
           "METRICRELAY_LINGER": "0.05"}  # fmt: skip
    worker = stack.start_worker(1, burst=True, **env)
    worker.process.wait(60)
    assert worker.process.returncode == 0
    outputs = [worker.log_path.read_bytes()]
    for command in (["status", "--json"], ["dead", "list", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "metricrelay", *command, "--redis-url", stack.redis.url],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        outputs += [done.stdout, done.stderr]
    client = stack.client()
    outputs += [b"".join(v for _, f in client.xrange("metricrelay:dead") for v in f.values())]
    assert client.xlen("metricrelay:dead") == 3
    for output in outputs:
        assert SECRET.encode() not in output
        assert b"Bearer " not in output
