"""HTTP/2 frames read by hand, for the benchmarks' clients: the h2 library closes its state
machine at the first GOAWAY and then refuses the responses a graceful GOAWAY still
delivers, so the benches let h2 encode requests and parse what comes back here."""

from __future__ import annotations

import asyncio

SETTINGS, PING, GOAWAY, RST_STREAM, HEADERS, DATA = 0x4, 0x6, 0x7, 0x3, 0x1, 0x0
END_STREAM = 0x1


def frames(buf: bytes, writer: asyncio.StreamWriter) -> tuple[list[tuple[int, int, int, bytes]], bytes]:
    """The complete frames at the start of `buf` as (type, flags, stream id, payload), and
    the bytes left; SETTINGS and PING are answered on `writer`, as a client must."""
    out = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + length:
            break
        kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
        payload, buf = buf[9 : 9 + length], buf[9 + length :]
        if kind == SETTINGS and not flags & 0x1:
            writer.write(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        elif kind == PING and not flags & 0x1:
            writer.write(b"\x00\x00\x08\x06\x01\x00\x00\x00\x00" + payload)
        out.append((kind, flags, sid, payload))
    return out, buf
