"""`lbcp watch`: the fleet and intent, live, from the API's `/v1/events` stream, one line per event."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from api.cli._common import client_for
from api.cli.client import Client, unreachable


def read_events(c: Client, deadline: float | None = None) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs from `/v1/events` until the stream ends (or `deadline`, monotonic)."""
    try:
        with c.http.stream("GET", "/v1/events", timeout=httpx.Timeout(30, read=60)) as r:
            if r.status_code >= 400:
                r.read()
                c.raise_problem(r)
            name, data = "message", ""
            for line in r.iter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    return
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
                elif line == "" and data:
                    yield name, json.loads(data)
                    name, data = "message", ""
    except httpx.HTTPError as exc:
        raise unreachable(c, exc) from None


def _change(c: dict[str, Any]) -> str:
    name = f"{c['cluster']}/{c['name']}" if c.get("cluster") else c["name"]
    return f"{'delete' if c['deleted'] else 'put'} {c['kind']} {name}"


def _rollout(r: dict[str, Any]) -> str:
    rejected = f", {len(r['rejected'])} rejected" if r["rejected"] else ""
    done = " (complete)" if r["complete"] else ""
    return f"r{r['revision']}: {len(r['acked'])}/{r['nodes']} acked{rejected}{done}"


def describe(event: str, d: Any) -> str:
    """One event as one line of text."""
    if event == "snapshot":
        return f"revision {d['revision']}, {len(d['nodes'])} Envoys, {len(d['drained'])} drained, etcd {d['etcd']}"
    if event == "intent":
        return f"r{d['revision']}: " + ", ".join(_change(c) for c in d["changes"])
    if event == "rollout":
        return _rollout(d)
    if event == "node":
        load = d.get("load") or {}
        conns = f", {load['connections']} connections" if "connections" in load else ""
        return (
            f"{d['node_id']} ({d.get('fleet')}) on {d.get('replica')}: acked r{d.get('acked_revision', 0)}, "
            f"front {d.get('front_state')}{conns}"
        )
    if event == "node-gone":
        return f"{d['node_id']} disconnected" + (" (drained)" if d.get("drain") else "")
    if event == "rebalance":
        st = d.get("status") or {}
        return f"fleet {d['fleet']}: {st.get('state', 'requested')}, {st.get('moved', 0)} moved"
    if event == "etcd":
        return f"etcd {d['state']}" + (f": {d['detail']}" if d.get("detail") else "")
    return json.dumps(d)


def cmd_watch(args: argparse.Namespace) -> int:
    c = client_for(args)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen = 0
    for event, data in read_events(c, deadline):
        if args.output == "json":
            print(json.dumps({"event": event, "data": data}), flush=True)
        else:
            print(f"{time.strftime('%H:%M:%S')} {event:<9} {describe(event, data)}", flush=True)
        seen += 1
        if args.count and seen >= args.count:
            break
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    x = sub.add_parser("watch", help="follow the fleet and intent live: writes, rollouts, Envoys (/v1/events)")
    x.add_argument("-o", "--output", choices=("text", "json"), default="text", help="json: one event per line")
    x.add_argument("--count", type=int, help="stop after this many events")
    x.add_argument("--timeout", type=float, help="stop after this many seconds")
    x.set_defaults(func=cmd_watch)
