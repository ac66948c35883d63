"""The fleet model against a real fleet: `python -m bench.rebalance [--per-envoy 2000 --rate 500 --runs 4]`.

A real run of the model's `grow` scenario at machine scale: three Envoys, each at its own
127.0.1.N, hold `--per-envoy` persistent connections, half WebSockets and half HTTP/2 (h2c,
a GET every 5 s), from clients that resolve `www.model.test` through `lbcp dns` (its own
process) on every (re)connect and back off as the model's clients do (0.5–1.5 × 1 s,
doubling); a fourth Envoy joins and the fleet is rebalanced at `--rate` connections/s. The
clients count the requests that failed, how their WebSockets closed, and how long each
reconnect took (back-off, lateness, DNS, connect). The same scenario runs in
bench/fleetmodel.py (lbcp's own front tier and mover code, the real run's drain time and
sample interval, no churn), once with instant reconnects and once with the real clients'
median reconnect delay; all is written to bench/results/rebalance.json (plot .png;
rebalance-drainN.* for another `--drain-time`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import h2.config
import h2.connection
import hpack
import httpx
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from api.localcluster.demo import ws_accept
from api.localcluster.procs import EnvoyProcess, free_port, wait_until
from bench import h2wire
from bench.fleetmodel import DT, Envoy, Model
from bench.fleetsim.stack import Stack, listening
from bench.plotting import pyplot
from controlplane.intent.model import Capacity
from controlplane.xds.resources import SHARDS

RESULTS = Path(__file__).parent / "results"
ADDRESSES = ["127.0.1.101", "127.0.1.102", "127.0.1.103", "127.0.1.104"]
NAME = "www.model.test"
LOAD_INTERVAL = 1.0
H2_INTERVAL = 5.0  # each HTTP/2 client's request period
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
CONNECT_TIMEOUT = 10.0  # the clients' connect and handshake timeout


class _Tally:
    """What one client process saw, written to a file twice a second for the parent to read."""

    def __init__(self) -> None:
        self.held = {"ws": 0, "h2": 0}
        self.connects = 0
        self.attempts = 0
        self.resolve_failures = 0
        # From a connection's end to the client's next one: when (on the machine's monotonic
        # clock, which the parent shares), and the seconds spent in each part of it.
        self.away: list[dict[str, float]] = []
        self.ok = 0
        # Failed requests by how: reset, a status other than 200, or the connection closed
        # with the request open (after Envoy's GOAWAY, or with none: an idle connection's
        # close at a shed's drain end racing a request the client had just sent).
        self.failed = {"reset": 0, "status": 0, "closed_after_goaway": 0, "closed_without_goaway": 0}
        self.goaways = 0
        self.ws_closes = {"normal": 0, "abnormal": 0}


async def _h2(address: str, port: int, tally: _Tally, opened: Callable[[], None]) -> None:
    """One HTTP/2 (h2c) connection that sends a GET every H2_INTERVAL s until Envoy's GOAWAY,
    then lets the requests in flight finish and returns (frames read by bench/h2wire.py)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    decoder = hpack.Decoder()
    open_streams: set[int] = set()
    going = False

    def request() -> None:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", NAME)], True)
        open_streams.add(sid)
        writer.write(conn.data_to_send())

    async def ticker() -> None:
        await asyncio.sleep(random.uniform(0, H2_INTERVAL))
        while not going:
            request()
            await asyncio.sleep(H2_INTERVAL)

    tally.connects += 1
    opened()
    tally.held["h2"] += 1
    tick = asyncio.create_task(ticker())
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                tally.failed["closed_after_goaway" if going else "closed_without_goaway"] += len(open_streams)
                return
            got, buf = h2wire.frames(buf + data, writer)
            for kind, flags, sid, payload in got:
                if kind == h2wire.GOAWAY and not going:  # no new requests on this connection
                    going = True
                    tally.goaways += 1
                elif kind == h2wire.RST_STREAM and sid in open_streams:
                    tally.failed["reset"] += 1
                    open_streams.discard(sid)
                elif kind == h2wire.HEADERS:  # every block through the decoder, whose table they share
                    # (Envoy sends no PADDED or PRIORITY flags, nor CONTINUATION, for these.)
                    status = dict(decoder.decode(payload)).get(":status")
                    if sid in open_streams and status not in (None, "200"):
                        tally.failed["status"] += 1
                        open_streams.discard(sid)
                    elif flags & h2wire.END_STREAM and sid in open_streams:
                        tally.ok += 1
                        open_streams.discard(sid)
                elif kind == h2wire.DATA and flags & h2wire.END_STREAM and sid in open_streams:
                    tally.ok += 1
                    open_streams.discard(sid)
            if going and not open_streams:
                return
    finally:
        tally.held["h2"] -= 1
        tick.cancel()
        writer.close()


async def _ws(address: str, port: int, tally: _Tally, opened: Callable[[], None]) -> None:
    """One WebSocket held until Envoy closes it; a close without a close frame is abnormal."""
    async with ws_connect(
        f"ws://{address}:{port}/", open_timeout=CONNECT_TIMEOUT, close_timeout=1, ping_interval=None
    ) as ws:
        await asyncio.wait_for(ws.recv(), CONNECT_TIMEOUT)  # the backend's greeting
        tally.connects += 1
        opened()
        tally.held["ws"] += 1
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            tally.ws_closes["normal" if exc.rcvd is not None else "abnormal"] += 1
        finally:
            tally.held["ws"] -= 1


async def _clients(dns_port: int, port: int, first: str, n: int, seconds: float, out: str) -> None:
    """`n` clients that stay connected, half WebSocket and half HTTP/2: first to `first`, then
    wherever lbcp dns says, with the model's jittered exponential back-off before each retry."""
    tally = _Tally()
    deadline = time.monotonic() + seconds

    async def resolve() -> str | None:
        try:
            q = dns.message.make_query(NAME, "A")
            r = await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=2)
        except (OSError, dns.exception.DNSException):
            tally.resolve_failures += 1
            return None
        return r.answer[0][0].address if r.answer else None

    async def one(i: int) -> None:
        address: str | None = first
        level = 0
        hold = _ws if i % 2 else _h2
        away: dict[str, float] | None = None  # since the last connection ended
        t = 0.0  # this attempt's start
        opened_now = [False]

        def opened() -> None:
            opened_now[0] = True
            if away is not None:
                now = time.monotonic()
                away["connect"] += now - t
                away["total"] = now - away["lost"]
                tally.away.append(away)

        await asyncio.sleep(i / 500)  # a ramp of 500/s per process
        while time.monotonic() < deadline:
            if address is not None:
                tally.attempts += 1
                opened_now[0] = False
                t = time.monotonic()
                with contextlib.suppress(OSError, TimeoutError, WebSocketException):
                    await hold(address, port, tally, opened)
                if opened_now[0]:
                    level = 0
                    away = {"lost": time.monotonic(), "back_off": 0.0, "late": 0.0, "resolve": 0.0, "connect": 0.0}
                elif away is not None:
                    away["connect"] += time.monotonic() - t
            nap = min(30.0, 2.0**level) * random.uniform(0.5, 1.5)
            slept = time.monotonic()
            await asyncio.sleep(nap)
            level += 1
            woke = time.monotonic()
            address = await resolve()
            if away is not None:  # the event loop's own lateness waking up, then the DNS query
                away["back_off"] += nap
                away["late"] += woke - slept - nap
                away["resolve"] += time.monotonic() - woke

    async def report() -> None:
        while time.monotonic() < deadline:
            Path(out).write_text(json.dumps(vars(tally)))
            await asyncio.sleep(0.5)

    await asyncio.gather(report(), *(one(i) for i in range(n)))


async def _backend(port: int) -> None:
    """The upstream: WebSockets that greet and then wait for the close, and `200 ok` with
    keep-alive for plain GETs. By hand, because each connection here is one small coroutine
    (a library server lingers on every close, and 3,000 held WebSockets are the point)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                fields = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in head[1:])}
                key = fields.get("sec-websocket-key")
                if key is None:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    continue
                accept = ws_accept(key)
                writer.write(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                    + f"sec-websocket-accept: {accept}\r\n\r\n".encode()
                    + b"\x81\x05hello"  # one unmasked text frame
                )
                await reader.read()  # held until Envoy closes it
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def real(per_envoy: int, rate: int, drain_time: int) -> dict[str, Any]:
    stack = Stack(replicas=1, replica_args=("--front-cidr", "*=127.0.0.0/8", "--load-interval", str(LOAD_INTERVAL)))
    stack.start()
    backend_port, port, dns_port = free_port(), free_port(), free_port()
    backend = subprocess.Popen([sys.executable, "-m", "bench.rebalance", "--serve-backend", str(backend_port)])
    front = stack.front_door(dns_port, "model.test")
    envoys: list[EnvoyProcess] = []
    clients: list[subprocess.Popen[bytes]] = []
    tallies = [stack.root / f"clients-{i}.json" for i in range(3)]
    pool = ThreadPoolExecutor(4)
    try:
        ops = [
            {"op": "put", "kind": "cluster", "name": "app", "body": {}},
            {"op": "put", "kind": "backend", "cluster": "app", "name": "a0",
             "body": {"address": "127.0.0.1", "port": backend_port}},
            {"op": "put", "kind": "listener", "name": "edge",
             "body": {"address": "127.0.0.1", "port": port, "bind_public_address": True}},
            {"op": "put", "kind": "route", "name": "all",
             "body": {"listener": "edge", "websocket": True, "timeout": None, "backends": [{"cluster": "app"}]}},
            {"op": "put", "kind": "fleet", "name": "default",
             "body": {"capacity": {"max_connections_per_envoy": 4 * per_envoy}}},
        ]  # fmt: skip
        httpx.post(f"{stack.api_url}/v1/batch", json={"operations": ops}, timeout=10).raise_for_status()
        xds = [("127.0.0.1", int(t.rsplit(":", 1)[1])) for t in stack.targets]

        def envoy(i: int) -> None:
            e = EnvoyProcess(
                stack.root / "envoy", f"rb-{i}", "default", xds, public_address=ADDRESSES[i], drain_time=drain_time
            )
            e.start()
            envoys.append(e)
            wait_until(lambda: listening(port, ADDRESSES[i]), 30, what=f"rb-{i}")

        for i in range(3):
            envoy(i)
        for a, out in zip(ADDRESSES[:3], tallies, strict=True):
            argv = ["--serve-clients", str(dns_port), str(port), a, str(per_envoy), "900", str(out)]
            clients.append(subprocess.Popen([sys.executable, "-m", "bench.rebalance", *argv]))
        active = f"listener.127.0.0.1_{port}.downstream_cx_active"
        total = f"listener.127.0.0.1_{port}.downstream_cx_total"

        def read(e: EnvoyProcess) -> tuple[int, int]:
            s = e.stats(f"^listener.127.0.0.1_{port}.downstream_cx_(active|total)$")
            return s.get(active, 0), s.get(total, 0)

        timeline: list[dict[str, Any]] = []
        started = time.monotonic()

        def sample(status: dict[str, Any] | None = None) -> dict[str, Any]:
            reads = list(pool.map(read, envoys))
            row = {"t": round(time.monotonic() - started, 2), "connections": [r[0] for r in reads],
                   "total": [r[1] for r in reads], "mover": status}  # fmt: skip
            timeline.append(row)
            return row

        # Settled: every client held for 3 s in a row (a ramp the clients' own CPU cannot keep
        # up with times some handshakes out, and those come back through the front door).
        full_since: list[float | None] = [None]

        def connected() -> bool:
            row = sample()
            if sum(row["connections"]) < 3 * per_envoy:
                full_since[0] = None
                return False
            full_since[0] = full_since[0] if full_since[0] is not None else row["t"]
            return row["t"] - full_since[0] >= 3

        wait_until(connected, 180, what="the clients connected and settled")
        envoy(3)
        time.sleep(2 * LOAD_INTERVAL)  # its first samples are in
        joined = sample()["t"]
        r = httpx.post(f"{stack.api_url}/v1/fleets/default/rebalance", json={"rate": rate}, timeout=10)
        r.raise_for_status()
        asked = r.json()["requested"]["at"]  # the request's own stamp, which the mover's status names
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = httpx.get(f"{stack.api_url}/v1/fleets/default/rebalance", timeout=5).json().get("status") or {}
            sample({k: st.get(k) for k in ("state", "moved", "remaining", "rate")})
            if st.get("state") == "balanced" and st.get("request") == round(asked, 3):
                break
            time.sleep(0.1)
        for _ in range(30):
            sample()
            time.sleep(0.1)
        out = _result(timeline, joined, 3 * per_envoy)
        seen = [json.loads(t.read_text()) for t in tallies]
        counts = ("connects", "attempts", "resolve_failures", "ok", "goaways")
        out["clients"] = {k: sum(s[k] for s in seen) for k in counts}
        away = [a for s in seen for a in s["away"] if a["lost"] >= started + joined]
        out["clients"]["away_seconds"] = {
            part: {q: round(sorted(a[part] for a in away)[int(f * (len(away) - 1))], 2) for q, f in QUANTILES}
            for part in ("total", "back_off", "late", "resolve", "connect")
            if away
        }
        # What the model's clients do not have: the time between the back-off's end and the
        # connection (the event loop's lateness, the DNS query, the connect and handshake).
        delays = sorted(a["total"] - a["back_off"] for a in away)
        out["clients"]["reconnect_delay_p50"] = round(delays[len(delays) // 2], 2) if delays else 0.0
        out["clients"]["failed"] = {k: sum(s["failed"][k] for s in seen) for k in seen[0]["failed"]}
        out["clients"]["ws_closes"] = {k: sum(s["ws_closes"][k] for s in seen) for k in ("normal", "abnormal")}
        out["clients"]["held_at_end"] = {k: sum(s["held"][k] for s in seen) for k in ("ws", "h2")}
        return out
    finally:
        for c in clients:
            c.kill()
        for e in envoys:
            e.stop()
        front.kill()
        backend.kill()
        stack.stop()


def _result(timeline: list[dict[str, Any]], since: float, held: int) -> dict[str, Any]:
    rows = [r for r in timeline if r["t"] >= since]
    n = len(rows[0]["connections"])

    def spread(r: dict[str, Any]) -> float:
        c = r["connections"][:n]
        mean = sum(c) / len(c)
        return max(abs(x - mean) for x in c) / mean if mean else 0.0

    within = next((r["t"] - since for r in rows if spread(r) <= 0.1), None)
    peak = 0.0
    for i in range(n):
        for j, a in enumerate(rows):
            for b in rows[j + 1 :]:
                if b["t"] - a["t"] >= 1.0:
                    peak = max(peak, (b["total"][i] - a["total"][i]) / (b["t"] - a["t"]))
                    break
    forced = sum(rows[0]["connections"][i] - min(r["connections"][i] for r in rows) for i in range(n - 1))
    return {
        "seconds_until_within_tolerance": round(within, 1) if within is not None else None,
        "peak_new_connections_per_second": round(peak),
        "moved_off_the_old_envoys": forced,
        "final": rows[-1]["connections"],
        "held": held,
        "timeline": [
            {"t": round(r["t"] - since, 2), "connections": r["connections"]}
            | ({"mover": r["mover"]} if r.get("mover") else {})
            for r in rows
        ],
    }


def model(per_envoy: int, rate: int, drain_time: int, reconnect_delay: float = 0.0) -> dict[str, Any]:
    envoys = [Envoy(f"rb-{i}") for i in range(4)]
    for e in envoys[:3]:
        e.shards = [per_envoy / SHARDS] * SHARDS
    envoys[3].alive = False
    m = Model(envoys, Capacity(max_connections_per_envoy=4 * per_envoy), drain_time=drain_time,
              sample_interval=LOAD_INTERVAL, session_seconds=1e12, sessions=0,
              reconnect_delay=reconnect_delay)  # fmt: skip

    def grow(model: Model) -> None:
        model.envoys[3].alive = True
        model.rebalance = (float(rate), 10.0)

    m.run(2.0 + 120, {2.0: grow})
    rows = [{"t": r["t"], "connections": r["connections"], "total": [0] * 4} for r in m.timeline]
    out = _result(rows, 2.0, 3 * per_envoy)
    # New connections per second on one Envoy: the model counts them itself.
    out["peak_new_connections_per_second"] = max(
        round(sum(r["new_per_second"][3] * DT for r in m.timeline[k : k + 10])) for k in range(len(m.timeline) - 10)
    )
    return out


def _plot(result: dict[str, Any], name: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("real", "-"), ("model", "--")):
        tl = result[key]["timeline"]
        for i in range(4):
            ax.plot([r["t"] for r in tl], [r["connections"][i] for r in tl], style, label=f"{key} rb-{i}")
    ax.set_xlim(-1, 30)
    ax.set(xlabel="seconds after the rebalance was asked", ylabel="connections",
           title=f"3 -> 4 Envoys, rebalance at {result['rate']}/s: real (solid) and model (dashed)")  # fmt: skip
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--per-envoy", type=int, default=2000)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--drain-time", type=int, default=1, help="the Envoys' --drain-time-s (and the model's)")
    p.add_argument("--runs", type=int, default=1, help="real runs, one after another (the first is plotted)")
    p.add_argument("--serve-clients", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_clients:
        dns_port, port, first, n, seconds, out = args.serve_clients
        asyncio.run(_clients(int(dns_port), int(port), first, int(n), float(seconds), out))
        return
    if args.serve_backend:
        asyncio.run(_backend(args.serve_backend))
        return
    result: dict[str, Any] = {"per_envoy": args.per_envoy, "rate": args.rate, "drain_time": args.drain_time}
    result["model"] = model(args.per_envoy, args.rate, args.drain_time)
    print("model", json.dumps({k: v for k, v in result["model"].items() if k != "timeline"}))
    result["runs"] = []
    for _ in range(args.runs):
        run = real(args.per_envoy, args.rate, args.drain_time)
        result["runs"].append(run)
        print("real", json.dumps({k: v for k, v in run.items() if k != "timeline"}))
    result["real"] = result["runs"][0]
    result["runs"] = [{k: v for k, v in run.items() if k != "timeline"} for run in result["runs"]]
    # The model again, with the reconnect delay the real clients had (the runs' median).
    delays = sorted(run["clients"]["reconnect_delay_p50"] for run in result["runs"])
    result["reconnect_delay"] = delays[len(delays) // 2]
    result["model_with_delay"] = model(args.per_envoy, args.rate, args.drain_time, result["reconnect_delay"])
    shown = {k: v for k, v in result["model_with_delay"].items() if k != "timeline"}
    print(f"model, reconnect delay {result['reconnect_delay']} s", json.dumps(shown))
    RESULTS.mkdir(exist_ok=True)
    name = "rebalance" if args.drain_time == 1 else f"rebalance-drain{args.drain_time}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(result, name)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # A SIGTERM (e.g. from `timeout`) unwinds through the `finally`s that stop the stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
