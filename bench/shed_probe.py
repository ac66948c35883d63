"""What Envoy itself does to idle persistent connections when asked to let go of them:
`python -m bench.shed_probe [--drain-time 4] [--strategy gradual|immediate]`.

One real Envoy (no lbcp: file-based LDS, so each step is exactly one listener update) with a
listener whose connections are split over 10 filter chains by the last digit of the client's
source port's tens digit (`filter_chain_matcher`, `SourcePortInput`, a regex). Idle HTTP/1.1
keep-alive, HTTP/2 and WebSocket clients, plus requests in flight (the demo backend's
`?delay_ms=`), then one of:

- `chain`: one filter chain's config changes (its metadata): an in-place filter-chain
  update, which drains only that chain's connections;
- `drain_listeners`: the admin's `POST /drain_listeners?graceful&inboundonly`.

For every client it records when (after the step) it saw a GOAWAY, a `Connection: close`, a
WebSocket close frame, or the TCP close, and whether a request in flight failed.
Writes bench/results/shed_probe-<scenario>-<strategy>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from api.localcluster.demo import DemoBackend
from api.localcluster.procs import Proc, envoy_binary, free_port, wait_until
from bench import h2wire

RESULTS = Path(__file__).parent / "results"
CHAINS = 10


def _hcm() -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": "edge",
            "codec_type": "AUTO",
            "upgrade_configs": [{"upgrade_type": "websocket"}],
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0s"}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }


def listener(port: int, generation: dict[int, int]) -> dict[str, Any]:
    """The listener: chain c<d> takes connections whose source port ends in digit d;
    `generation[d]` is written into that chain's metadata (a change drains only it)."""
    chains = []
    for d in range(CHAINS):
        chain: dict[str, Any] = {"name": f"c{d}", "filters": [_hcm()]}
        if generation.get(d):
            chain["metadata"] = {"filter_metadata": {"lbcp": {"generation": generation[d]}}}
        chains.append(chain)
    matchers = [
        {
            "predicate": {
                "single_predicate": {
                    "input": {
                        "name": "port",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3"
                            ".SourcePortInput"
                        },
                    },
                    # The tens digit: Linux picks even ephemeral ports for connect(), so
                    # the last digit would leave half the chains empty.
                    "value_match": {"safe_regex": {"google_re2": {}, "regex": f"^[0-9]*{d}[0-9]$"}},
                }
            },
            "on_match": {
                "action": {
                    "name": f"c{d}",
                    "typed_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": f"c{d}"},
                }
            },
        }
        for d in range(CHAINS)
    ]
    return {
        "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
        "name": "edge",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": chains,
        "filter_chain_matcher": {"matcher_list": {"matchers": matchers}},
    }


class Envoy:
    def __init__(self, root: Path, backend_port: int, drain_time: int, strategy: str) -> None:
        self.root = root
        self.port, self.admin_port = free_port(), free_port()
        self.lds = root / "lds.json"
        self.write_lds({})
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}},
            "node": {"id": "probe", "cluster": "probe"},
            "static_resources": {
                "clusters": [
                    {
                        "name": "backend",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": {
                            "cluster_name": "backend",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {
                                                        "address": "127.0.0.1",
                                                        "port_value": backend_port,
                                                    }
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ]
            },
            "dynamic_resources": {
                "lds_config": {"path_config_source": {"path": str(self.lds), "watched_directory": {"path": str(root)}}}
            },
        }
        (root / "boot.json").write_text(json.dumps(boot))
        argv = [envoy_binary(), "-c", str(root / "boot.json"), "--base-id", str(os.getpid() % 10000 + 7000)]
        argv += ["-l", "warning", "--drain-time-s", str(drain_time), "--drain-strategy", strategy]
        self.proc = Proc(argv, root / "envoy.log")

    def write_lds(self, generation: dict[int, int]) -> None:
        tmp = self.root / "lds.tmp"
        tmp.write_text(json.dumps({"resources": [listener(getattr(self, "port", 0), generation)]}))
        tmp.replace(self.lds)  # a move: the watch sees one complete file

    def stat(self, name: str) -> int:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.admin_port}/stats", params={"filter": f"^{name}$"}).text
        except httpx.HTTPError:
            return -1
        return int(text.split(":")[1]) if ":" in text else 0


# -- clients: each records what it saw, in seconds after the step ------------------------------


class Seen:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chain = -1
        self.events: dict[str, float] = {}
        self.failed: str | None = None
        self.responses = 0

    def note(self, event: str, t0: list[float]) -> None:
        if t0 and event not in self.events:
            self.events[event] = round(time.monotonic() - t0[0], 3)


async def h1_idle(port: int, seen: Seen, t0: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen.chain = writer.get_extra_info("sockname")[1] // 10 % CHAINS
    writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(2)
    if await reader.read() == b"":
        seen.note("tcp_close", t0)


async def h1_busy(port: int, seen: Seen, t0: list[float], stop: asyncio.Event) -> None:
    """A keep-alive connection with a request of 1.5 s always in flight."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen.chain = writer.get_extra_info("sockname")[1] // 10 % CHAINS
    try:
        while not stop.is_set():
            writer.write(b"GET /?delay_ms=1500 HTTP/1.1\r\nhost: x\r\n\r\n")
            head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).decode().lower()
            if not head.startswith("http/1.1 200"):
                seen.failed = head.split("\r\n")[0]
                return
            await reader.readexactly(2)
            if "connection: close" in head:
                seen.note("connection_close", t0)
                await reader.read()
                seen.note("tcp_close", t0)
                return
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        seen.failed = f"{type(exc).__name__}: in flight when the connection ended"
        seen.note("tcp_close", t0)


async def h2_idle(port: int, seen: Seen, t0: list[float], inflight: bool = False) -> None:
    try:
        await _h2(port, seen, t0, inflight)
    except Exception as exc:  # a client bug must show, not end the task silently
        seen.failed = f"client: {type(exc).__name__}: {exc}"


async def _h2(port: int, seen: Seen, t0: list[float], inflight: bool) -> None:
    """HTTP/2 with h2 encoding the requests and bench/h2wire.py reading the frames."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen.chain = writer.get_extra_info("sockname")[1] // 10 % CHAINS
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()

    def request(path: str) -> int:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")], True)
        return sid

    open_streams = {request("/")}
    writer.write(conn.data_to_send())
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            seen.note("tcp_close", t0)
            if open_streams and t0:
                seen.failed = f"{len(open_streams)} streams open at close"
            return
        got, buf = h2wire.frames(buf + data, writer)
        for kind, flags, sid, payload in got:
            if kind == h2wire.GOAWAY:
                seen.note("goaway", t0)
                if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF < 2**31 - 1:
                    seen.note("goaway_final", t0)
            elif kind == h2wire.RST_STREAM:
                seen.failed = f"stream {sid} reset"
                open_streams.discard(sid)
            elif kind in (h2wire.DATA, h2wire.HEADERS) and flags & h2wire.END_STREAM:
                seen.responses += 1
                open_streams.discard(sid)
                if inflight and "goaway" not in seen.events:
                    open_streams.add(request("/?delay_ms=1500"))
                    writer.write(conn.data_to_send())


async def ws_idle(port: int, seen: Seen, t0: list[float]) -> None:
    async with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=5, ping_interval=None) as ws:
        seen.chain = ws.transport.get_extra_info("sockname")[1] // 10 % CHAINS
        await ws.recv()
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            seen.note("ws_close_frame" if rcvd is not None else "tcp_close", t0)
            if rcvd is None:
                seen.failed = "no close frame (1006)"


async def probe(scenario: str, drain_time: int, strategy: str, per_kind: int) -> dict[str, Any]:
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"lbcp-shed-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    backend = DemoBackend("b")
    envoy = Envoy(root, backend.port, drain_time, strategy)
    envoy.proc.start()
    t0: list[float] = []
    stop = asyncio.Event()
    try:
        wait_until(lambda: envoy.stat("listener_manager.total_listeners_active") == 1, 20, what="the listener")
        seen: list[Seen] = []
        tasks = []
        for kind, fn in (("h1_idle", h1_idle), ("h2_idle", h2_idle), ("ws_idle", ws_idle)):
            for _ in range(per_kind):
                s = Seen(kind)
                seen.append(s)
                tasks.append(asyncio.create_task(fn(envoy.port, s, t0)))
        for _ in range(per_kind):
            s = Seen("h1_busy")
            seen.append(s)
            tasks.append(asyncio.create_task(h1_busy(envoy.port, s, t0, stop)))
            s2 = Seen("h2_busy")
            seen.append(s2)
            tasks.append(asyncio.create_task(h2_idle(envoy.port, s2, t0, inflight=True)))
        await asyncio.sleep(2.0)
        t0.append(time.monotonic())
        if scenario == "chain":
            envoy.write_lds({3: 1})  # chain c3 changes; the other nine do not
        else:
            httpx.post(f"http://127.0.0.1:{envoy.admin_port}/drain_listeners?graceful")
        await asyncio.wait(tasks, timeout=drain_time + 4)
        stop.set()
        await asyncio.wait(tasks, timeout=3)
        for t in tasks:
            t.cancel()
        rows = [
            {"kind": s.kind, "chain": s.chain, "events": s.events, "failed": s.failed, "responses": s.responses}
            for s in seen
        ]
        return {
            "scenario": scenario,
            "drain_time": drain_time,
            "strategy": strategy,
            "envoy": "1.40",
            "clients": rows,
            "summary": _summary(rows, scenario),
        }
    finally:
        envoy.proc.stop()
        backend.stop()


def _summary(rows: list[dict[str, Any]], scenario: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        mine = [r for r in rows if r["kind"] == kind]
        target = [r for r in mine if scenario != "chain" or r["chain"] == 3]
        others = [r for r in mine if scenario == "chain" and r["chain"] != 3]
        events = sorted({e for r in target for e in r["events"]})
        out[kind] = {
            "targeted": len(target),
            "closed": sum("tcp_close" in r["events"] for r in target),
            "failed": [r["failed"] for r in target if r["failed"]],
            **{e: sorted(r["events"][e] for r in target if e in r["events"]) for e in events},
            "others_touched": sum(bool(r["events"]) for r in others),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", choices=("chain", "drain_listeners"), default="chain")
    p.add_argument("--drain-time", type=int, default=4)
    p.add_argument("--strategy", choices=("gradual", "immediate"), default="gradual")
    p.add_argument("--per-kind", type=int, default=30)
    args = p.parse_args()
    result = asyncio.run(probe(args.scenario, args.drain_time, args.strategy, args.per_kind))
    RESULTS.mkdir(exist_ok=True)
    name = f"shed_probe-{args.scenario}-{args.strategy}.json"
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
