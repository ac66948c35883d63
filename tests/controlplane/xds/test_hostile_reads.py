"""Reads of an ops listener are bounded and every odd answer is a reason, never an exception
that escapes: the load sampler's kept-alive client (`_KeepAlive`) and the front probe
(`check`) against hostile servers written here (the attacker), on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from controlplane.xds.bootstrap import HOSTS_PATH, LOAD_PATH
from controlplane.xds.load import (
    MAX_HEAD,
    MAX_JSON_OBJECTS,
    MAX_LOAD_BODY,
    _KeepAlive,
    parse_hosts,
    parse_json,
    parse_load,
)
from controlplane.xds.probe import MAX_LINE, OpsError, check

HOST = "127.0.0.81"
TIMEOUT = 0.5

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def hostile(answer: Callable[[str], bytes] | Handler) -> AsyncIterator[tuple[int, list[str]]]:
    """A server answering each request: with `answer(path)`'s bytes, or by a handler of its
    own (reader, writer). Yields its port and the paths asked, in order."""
    asked: list[str] = []
    writers: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            if asyncio.iscoroutinefunction(answer):
                await answer(reader, writer)
                return
            for _ in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                asked.append(head.split(b" ", 2)[1].decode())
                writer.write(answer(asked[-1]))  # type: ignore[arg-type]
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    try:
        yield server.sockets[0].getsockname()[1], asked
    finally:
        server.close()
        for w in list(writers):
            w.transport.abort()
        await asyncio.wait_for(server.wait_closed(), 5)


def http(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers or (f"Content-Length: {len(body)}",))
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


async def _slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"[:10]:  # a byte every 0.2 s: 2 s in all
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.2)


async def _fast_huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # up to the close
    for _ in range(500):  # 500 MB, as fast as it is read
        writer.write(b"[" * (1 << 20))
        await writer.drain()


async def _closed_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(http(b"{", "Content-Length: 2"))  # and closes, a byte short


def _chunks(*parts: bytes) -> bytes:
    return http(b"".join(parts), "Transfer-Encoding: chunked")


ODD = {
    # name: (answer, reason)
    "bare status line": (lambda p: b"HTTP/1.1\r\n\r\n", "bad-head"),
    "not HTTP": (lambda p: b"[1, 2, 3]\r\n\r\n", "bad-head"),
    "HTTP/2 preface": (lambda p: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "bad-head"),
    "header without colon": (lambda p: b"HTTP/1.1 200 OK\r\nContent-Length 2\r\n\r\n{}", "bad-head"),
    "negative length": (lambda p: http(b"{}", "Content-Length: -2"), "bad-head"),
    "two lengths": (lambda p: http(b"{}", "Content-Length: 2", "Content-Length: 3"), "bad-head"),
    "gzip coding": (lambda p: http(b"{}", "Transfer-Encoding: gzip"), "bad-head"),
    "interim answer": (lambda p: b"HTTP/1.1 100 Continue\r\n\r\n", "bad-head"),
    "too many headers": (lambda p: http(b"{}", "Content-Length: 2", *["X-A: b"] * 100), "bad-head"),
    "200 KB line": (lambda p: b"A" * 200_000, "too-long"),
    "200 KB header": (lambda p: http(b"{}", "Content-Length: 2", "X-Big: " + "b" * 200_000), "too-long"),
    "huge length": (lambda p: http(b"", f"Content-Length: {500 << 20}"), "too-big"),
    "huge chunk": (lambda p: http(b"%x\r\n" % (500 << 20), "Transfer-Encoding: chunked"), "too-big"),
    "chunk size not hex": (lambda p: _chunks(b"zz\r\n{}\r\n0\r\n\r\n"), "bad-chunk"),
    "negative chunk": (lambda p: _chunks(b"-2\r\n{}\r\n0\r\n\r\n"), "bad-chunk"),
    "chunk without CRLF": (lambda p: _chunks(b"2\r\n{}XX0\r\n\r\n"), "bad-chunk"),
    "chunk size line 200 KB": (lambda p: _chunks(b"1" * 200_000), "too-long"),
    "endless trailers": (lambda p: _chunks(b"0\r\n" + b"X-T: 1\r\n" * 100 + b"\r\n"), "bad-chunk"),
    "closed mid-body": (_closed_mid_body, "closed"),
    "slow loris": (_slow, "timeout"),
    "huge up to the close": (_fast_huge, "too-big"),
}


@pytest.mark.parametrize("name", list(ODD))
async def test_an_odd_answer_is_a_reason_within_the_time_bound(name: str) -> None:
    answer, reason = ODD[name]
    async with hostile(answer) as (port, _):
        conn = _KeepAlive(HOST, port, TIMEOUT)
        started = time.monotonic()
        with pytest.raises(OpsError) as err:
            await conn.get(LOAD_PATH, MAX_LOAD_BODY)
        took = time.monotonic() - started
        conn.close()
    assert err.value.reason == reason, err.value.message
    assert err.value.message and len(err.value.message) <= 300
    assert took < TIMEOUT + 0.5, took


async def test_valid_framings_and_keep_alive() -> None:
    answers = iter(
        [
            http(b'{"a": 1}'),
            _chunks(b'3;ext=1\r\n{"a\r\n5\r\n": 2}\r\n0\r\nX-Trailer: t\r\n\r\n'),
            http(b"", status="204 No Content"),
            http(b'{"a": 3}', "Content-Type: application/json", "Content-Length: 8"),
        ]
    )
    async with hostile(lambda p: next(answers)) as (port, asked):
        conn = _KeepAlive(HOST, port, TIMEOUT)
        assert await conn.get("/one") == (200, b'{"a": 1}')
        assert await conn.get("/two") == (200, b'{"a": 2}')
        assert await conn.get("/three") == (204, b"")
        assert await conn.get("/four") == (200, b'{"a": 3}')
        conn.close()
    assert asked == ["/one", "/two", "/three", "/four"]  # one connection, four answers in order


async def test_up_to_the_close_and_a_closed_kept_alive_connection() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")  # then closes: keep-alive ends
        await writer.drain()

    async with hostile(once) as (port, _):
        conn = _KeepAlive(HOST, port, TIMEOUT)
        assert await conn.get("/a") == (200, b"{}")
        await asyncio.sleep(0.05)
        assert await conn.get("/b") == (200, b"{}")  # the closed connection is replaced, once
        conn.close()

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\n\r\n{"stats": []}')

    async with hostile(until_close) as (port, _):
        conn = _KeepAlive(HOST, port, TIMEOUT)
        assert await conn.get("/a") == (200, b'{"stats": []}')
        conn.close()


async def test_nothing_listening_is_connect() -> None:
    server = await asyncio.start_server(lambda r, w: None, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(OpsError) as err:
        await _KeepAlive(HOST, port, TIMEOUT).get(LOAD_PATH)
    assert err.value.reason == "connect"
    assert (await check(HOST, port, TIMEOUT)).reason == "connect"


PROBES = {
    "bare status line": (lambda p: b"HTTP/1.1\r\n\r\n", "bad-head"),
    "JSON list": (lambda p: b"[1, 2, 3]\r\n", "bad-head"),
    "200 KB line": (lambda p: b"A" * 200_000, "too-long"),
    "nothing, closed": (lambda p: b"", "closed"),
    "slow loris": (_slow, "timeout"),
}


@pytest.mark.parametrize("name", list(PROBES))
async def test_an_odd_probe_answer_is_a_reason_within_the_time_bound(name: str) -> None:
    answer, reason = PROBES[name]

    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with hostile(close_at_once if name == "nothing, closed" else answer) as (port, _):
        started = time.monotonic()
        r = await check(HOST, port, TIMEOUT)
        took = time.monotonic() - started
    assert (r.ok, r.status, r.reason) == (False, None, reason), r
    assert r.error and took < TIMEOUT + 0.5


async def test_a_probe_reads_only_the_status_line() -> None:
    """A well-formed status line is an answer whatever follows (the rest is never read): 503
    is failing with no reason, 200 passing, even with a huge body behind it."""
    async with hostile(lambda p: http(b"no", status="503 Service Unavailable")) as (port, _):
        r = await check(HOST, port, TIMEOUT)
        assert (r.ok, r.status, r.reason, r.error) == (False, 503, None, "")
    async with hostile(_fast_huge) as (port, _):
        r = await check(HOST, port, TIMEOUT)
        assert (r.ok, r.status, r.reason) == (True, 200, None)
    assert MAX_LINE < MAX_HEAD


def test_json_is_bounded_in_objects_and_depth() -> None:
    bomb = b"[" + b"{}," * MAX_JSON_OBJECTS[LOAD_PATH] + b"{}]"
    with pytest.raises(OpsError) as err:
        parse_json(bomb, MAX_JSON_OBJECTS[LOAD_PATH])
    assert err.value.reason == "too-big"
    with pytest.raises(OpsError) as err:
        parse_json(b"[" * 50_000 + b"]" * 50_000, 10**6)  # deeper than Python's recursion limit
    assert err.value.reason == "bad-json"
    with pytest.raises(OpsError) as err:
        parse_json(b"\xff\xfe{", 10)
    assert err.value.reason == "bad-json"
    assert parse_json(b'{"stats": []}', MAX_JSON_OBJECTS[HOSTS_PATH]) == {"stats": []}


def test_odd_stats_and_hosts_are_left_out() -> None:
    stats = [
        1,
        "x",
        None,
        [],
        {"name": 5, "value": 1},
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": True},
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": float("inf")},
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": -1},
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": 2**70},
        {"name": "listener." + "x" * 1000 + ".downstream_cx_active", "value": 5},
        {"name": "listener.127.0.0.1_10000.downstream_cx_active", "value": 7},
        *({"name": f"listener.l{i}.downstream_cx_active", "value": 1} for i in range(5000)),
        *({"name": f"overload.a{i}.active", "value": 1} for i in range(500)),
    ]
    got = parse_load(stats, None)
    assert got["listeners"]["127.0.0.1_10000"] == 7
    assert len(got["listeners"]) <= 1000 and len(got["overload_actions"]) <= 64
    hosts, _ = parse_hosts(
        {
            "cluster_statuses": [
                1,
                {"name": ["x"]},
                {"name": "web", "host_statuses": "nope"},
                {"name": "api", "host_statuses": [
                    1,
                    {"health_status": "bad"},
                    {"health_status": {"failed_outlier_check": True}, "address": []},
                    {"health_status": {"failed_outlier_check": True},
                     "address": {"socket_address": {"address": "10.0.0.1", "port_value": "80"}}},
                    {"health_status": {"failed_outlier_check": True},
                     "address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}}},
                ]},
            ]
        }
    )  # fmt: skip
    assert hosts == {"web": {}, "api": {"10.0.0.2:80": "ejected"}}


def test_backoff_doubles_to_the_cap_and_a_refused_connection_does_not_count() -> None:
    from controlplane.xds.load import LoadSampler
    from controlplane.xds.probe import _Schedule

    sampler = LoadSampler(interval=1.0, max_backoff=8.0)
    s = _Schedule()
    waits = []
    for reason in ("bad-head", "timeout", "too-big", "bad-json", "bad-head", "bad-head", None, "connect"):
        sampler.schedule(s, 100.0, reason)
        waits.append(s.due - 100.0)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 1.0, 1.0]
    for reason in ("bad-head", "bad-head", "connect", "connect", "bad-head"):
        sampler.schedule(s, 100.0, reason)
    assert s.due - 100.0 == 4.0  # the refusals neither grew nor ended the back-off
