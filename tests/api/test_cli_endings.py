"""How CLI commands end when the operator or the reader stops them: Ctrl-C (SIGINT) ends
`lbcp watch` and every wait or follow at once with exit 130, no traceback and at most one
line saying what goes on without it; a reader that goes away (`lbcp config envoy-0 | head`)
ends the command quietly. The API behind it logs no error for either."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import pytest

from controlplane.intent.model import Cluster
from tests.api.test_cli import ROOT, _env, lbcp
from tests.conftest import acked_client, wait_for


async def _start(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.cli", "--api", url, "--state-dir", str(ROOT / ".no-such-lbcp-state"), *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip


async def _interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_ctrl_c_ends_lbcp_watch_quietly(serve_api: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = await serve_api()
    proc = await _start(url, "watch")
    assert proc.stdout is not None
    assert b"snapshot" in await asyncio.wait_for(proc.stdout.readline(), 20)
    code, err = await _interrupt(proc)
    assert code == 130 and "Traceback" not in err and err.count("\n") <= 1, (code, err)
    await asyncio.sleep(0.3)  # the API notices the stream is gone
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_ctrl_c_ends_a_wait_with_one_line(
    serve_api: Any, make_replica: Any, store: Any, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    """A write's --wait follows a rollout that never completes (the Envoy does not ack); a
    drain's --wait waits for a withdrawal that never comes. Ctrl-C ends each with one line
    saying what was done regardless."""
    replica = await make_replica("endings", front_cidrs=("edge=127.0.0.0/8",), front_unprobed=("edge",))
    url = await serve_api()
    await store.put(Cluster(name="first"))
    clients = [await acked_client(replica, f"edge-{i}", public_address=f"127.0.0.{10 + i}") for i in range(2)]
    try:
        doc = tmp_path / "c.yaml"
        doc.write_text("name: second\n")
        proc = await _start(url, "cluster", "apply", "-f", str(doc), "--wait", "60")

        await _until_cluster(store, "second")
        await asyncio.sleep(1.0)  # the CLI is following the rollout now
        code, err = await _interrupt(proc)
        assert code == 130 and "Traceback" not in err, (code, err)
        [line] = err.splitlines()
        assert line.startswith("stopped waiting: r") and "rolls out all the same" in line, err

        proc = await _start(url, "node", "drain", "edge-0", "--wait", "60")

        async def drained() -> bool:
            fleet = (await lbcp(url, "fleet", "-o", "json")).out
            return '"front_state": "drained"' in fleet

        await wait_for(drained, 20, "edge-0 drained")
        await asyncio.sleep(0.5)
        code, err = await _interrupt(proc)
        assert code == 130 and "Traceback" not in err, (code, err)
        [line] = err.splitlines()
        assert line.startswith("interrupted: edge-0 may be drained already"), err
    finally:
        for c in clients:
            await c.close()
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def _until_cluster(store: Any, name: str) -> None:
    from controlplane.intent.errors import StoreError
    from controlplane.intent.keyspace import Ref
    from controlplane.intent.model import Kind

    async def there() -> bool:
        try:
            await store.get(Ref(Kind.CLUSTER, name))
        except StoreError:
            return False
        return True

    await wait_for(there, 20, f"cluster {name} written")


async def test_a_closed_pipe_ends_quietly(serve_api: Any, store: Any) -> None:
    from controlplane.intent.model import Backend

    url = await serve_api()
    await store.put(Cluster(name="web"))
    for i in range(40):
        await store.put(Backend(name=f"web-{i}", address="10.0.0.1", port=30000 + i), cluster="web")
    for args in (["get", "backends", "web"], ["get", "backends", "web", "-o", "json"], ["get"], ["--help"]):
        # The reader is gone before the first byte is written: every write fails (argparse's
        # --help ignores that itself: exit 0).
        proc = await _start(url, *args)
        assert proc.stdout is not None
        proc.stdout.feed_eof()
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        want = (0, 141) if args == ["--help"] else (141,)
        assert proc.returncode in want and err == b"", (args, proc.returncode, err.decode())

    # `lbcp get backends web -o json | head -1`: whether the CLI had written it all before the
    # reader left or not, it ends quietly.
    shell = f"{sys.executable} -m api.cli --api {url} get backends web -o json | head -1; exit ${{PIPESTATUS[0]}}"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", shell, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"[\n" and err == b"" and proc.returncode in (0, 141), (proc.returncode, err)


async def test_lbcp_config_into_head_and_the_api_log(
    serve_api: Any, make_replica: Any, store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`lbcp config NODE | head`: quiet. The API builds what it serves the node from one read
    of etcd; it used to open a watch on a thread of its own per request and log "Event loop
    is closed" (asyncio, ERROR) once that thread's loop was gone."""
    replica = await make_replica("cfg")
    await store.put(Cluster(name="web"))
    url = await serve_api()
    client = await acked_client(replica, "cfg-0", "default", public_address="127.0.0.10")
    try:
        for _ in range(3):
            r = await lbcp(url, "config", "cfg-0", "--type", "cds")
            assert r.code == 0 and '"name": "web"' in r.out and r.err == "", r
        shell = f"{sys.executable} -m api.cli --api {url} config cfg-0 | head -1; exit ${{PIPESTATUS[0]}}"
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", shell, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env()
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert out == b"{\n" and err == b"" and proc.returncode in (0, 141), (proc.returncode, err)
    finally:
        await client.close()
    await asyncio.sleep(1.0)  # late gRPC events of a closed loop would be reported by now
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, "\n".join(r.getMessage() + (r.exc_text or "") for r in errors)
