"""Front-door commands: renders (once or --watch), the ExaBGP helper, and `lbcp dns`."""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from api.cli._common import client_for
from api.cli.client import ApiProblem

# What each format is rendered for, sent to the API every time (so the note below is exactly
# what was used): the documentation addresses and private AS numbers stand in for real ones.
DEFAULTS: dict[str, Any] = {
    "vip": "198.51.100.1",
    "port": 443,
    "zone": "example.com",
    "name": "www",
    "ttl": 60,
    "neighbor": "192.0.2.1",
    "local_as": 65001,
    "peer_as": 65000,
}
_USES = {
    "dns": ("name", "zone", "ttl"),
    "iptables": ("vip", "port"),
    "nftables": ("vip", "port"),
    "bird": ("vip", "neighbor", "local_as", "peer_as"),
    "json": (),
}
_FLAG = {"local_as": "--local-as", "peer_as": "--peer-as"}


def render_note(fmt: str, args: argparse.Namespace) -> str | None:
    """One line for stderr: which VIP and port (DNS name, BGP peer) the render is for, each
    value that is a stand-in default marked with the flag that sets it."""
    if not _USES[fmt]:
        return None

    def v(key: str) -> str:
        value = getattr(args, key)
        return f"{value} (default; set with {_FLAG.get(key, '--' + key)})" if not _given(args, key) else str(value)

    if fmt == "dns":
        what = f"name {v('name')}, zone {v('zone')}, TTL {v('ttl')}"
    elif fmt == "bird":
        what = f"VIP {v('vip')}, BGP neighbor {v('neighbor')}, AS {v('local_as')}, peer AS {v('peer_as')}"
    else:
        what = f"VIP {v('vip')}, port {v('port')}"
    return f"lbcp: {fmt} rendered for {what}"


def _given(args: argparse.Namespace, key: str) -> bool:
    return key in getattr(args, "given", set())


def cmd_frontdoor(args: argparse.Namespace) -> int:
    """Render the front tier for the in-service Envoys (from the admin API); with --watch,
    re-render every --interval seconds and, when the output changed, replace the file
    (atomically) and run --exec (a sidecar reloading BIND, BIRD or the firewall)."""
    args.given = {k for k in DEFAULTS if getattr(args, k) is not None}
    for k, v in DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    params = {k: getattr(args, k) for k in _USES[args.format]}
    params |= {k: v for k, v in (("fleet", args.fleet), ("mode", args.mode), ("node", args.node)) if v is not None}
    client = client_for(args)
    last: str | None = None
    renders = 0
    while True:
        text: str | None
        try:
            r = client.request("GET", f"/v1/frontdoor/{args.format}", params=params)
            text = r.text if args.format != "json" else json.dumps(r.json(), indent=2) + "\n"
        except (ApiProblem, httpx.HTTPError) as exc:
            if not args.watch:
                raise
            print(f"render failed ({exc}); keeping the last one", file=sys.stderr)
            text = last
        if text is not None and text != last:
            last = text
            renders += 1
            note = render_note(args.format, args) if renders == 1 else None
            if note:
                print(note, file=sys.stderr, flush=True)
            if args.output:
                tmp = Path(args.output + ".tmp")
                tmp.write_text(text)
                tmp.replace(args.output)
            else:
                print(text, end="", flush=True)
            if args.exec:
                code = subprocess.run(shlex.split(args.exec)).returncode
                if code:
                    print(f"--exec exited {code}", file=sys.stderr)
        if not args.watch or (args.count and renders >= args.count):
            return 0
        time.sleep(args.interval)


def cmd_frontdoor_exabgp(args: argparse.Namespace) -> int:
    """An ExaBGP process (`process lbcp { run lbcp frontdoor exabgp ...; encoder text; }`):
    announce the anycast VIP while --node is in service, withdraw it when it leaves."""
    net = ipaddress.ip_network(
        args.vip if "/" in args.vip else f"{args.vip}/{128 if ':' in args.vip else 32}", strict=False
    )
    client = client_for(args)
    params = {"fleet": args.fleet} if args.fleet else {}
    announced: bool | None = None
    up: bool | None
    changes = 0
    while True:
        try:
            members = client.get("/v1/frontdoor/json", **params)["in_service"]
            up = any(m["node_id"] == args.node for m in members)
        except (ApiProblem, httpx.HTTPError) as exc:
            # Unknown is not "down": keep announcing what was decided until the API answers.
            print(f"# lbcp: fleet state unavailable ({exc})", file=sys.stderr)
            up = announced
        if up is not None and up != announced:
            announced = up
            changes += 1
            print(f"{'announce' if up else 'withdraw'} route {net} next-hop {args.next_hop}", flush=True)
        if args.count and changes >= args.count:
            return 0
        time.sleep(args.interval)


def cmd_dns(args: argparse.Namespace) -> int:
    import asyncio

    from controlplane.etcd import Etcd, EtcdConfig
    from controlplane.frontdoor.dns import DnsConfig, FrontDoorDns

    cfg = DnsConfig(
        zone=args.zone,
        name=args.name,
        ttl=args.ttl,
        fleet=args.fleet,
        host=args.host,
        port=args.port,
        interval=args.interval,
        stale_hold=args.stale_hold,
        metrics_port=args.metrics_port,
    )

    async def run() -> None:
        etcd = Etcd(EtcdConfig.from_env(args.etcd, args.prefix))
        try:
            await FrontDoorDns(cfg).run(etcd)
        finally:
            await etcd.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fd = sub.add_parser("frontdoor", help="the front tier for the in-service Envoys: DNS, BIRD, iptables, nftables")
    fds = fd.add_subparsers(dest="action", required=True)
    x = fds.add_parser(
        "render",
        help="render one format (docs/frontdoor.md)",
        description="Render the front tier for the Envoys in service now; stderr says what it is rendered for.",
    )
    x.add_argument("--format", required=True, choices=("json", "dns", "iptables", "nftables", "bird"))
    x.add_argument("--fleet", help="only this fleet's Envoys (default: every fleet's)")
    x.add_argument("--zone", help=f"dns: the zone (default {DEFAULTS['zone']})")
    x.add_argument("--name", help=f"dns: the name in the zone the Envoys answer for (default {DEFAULTS['name']})")
    x.add_argument("--ttl", type=int, help=f"dns: seconds resolvers keep the answer (default {DEFAULTS['ttl']})")
    x.add_argument(
        "--vip",
        help="iptables, nftables: the virtual IP clients connect to, DNATed to the Envoys; bird: the anycast "
        f"address announced (default {DEFAULTS['vip']}, a documentation address: give yours)",
    )
    x.add_argument(
        "--port",
        type=int,
        help=f"iptables, nftables: the TCP port of the VIP, and of the Envoys behind it (default {DEFAULTS['port']})",
    )
    x.add_argument("--neighbor", help=f"bird: the BGP peer's address (default {DEFAULTS['neighbor']})")
    x.add_argument("--local-as", type=int, help=f"bird: this host's AS number (default {DEFAULTS['local_as']})")
    x.add_argument("--peer-as", type=int, help=f"bird: the BGP peer's AS number (default {DEFAULTS['peer_as']})")
    x.add_argument("--mode", help="iptables: nth|random; nftables: hash|maglev|numgen")
    x.add_argument("--node", help="bird: the Envoy host to render for")
    x.add_argument("-o", "--output", help="file (default stdout); replaced atomically")
    x.add_argument("--watch", action="store_true", help="keep going: re-render when the in-service set changes")
    x.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between looks")
    x.add_argument("--exec", help="--watch: run this command after each change (e.g. 'birdc configure')")
    x.add_argument("--count", type=int, help="--watch: stop after this many renders")
    x.set_defaults(func=cmd_frontdoor)
    x = fds.add_parser(
        "exabgp", help="an ExaBGP process: announce/withdraw the anycast VIP as --node enters/leaves service"
    )
    x.add_argument("--node", required=True)
    x.add_argument("--vip", required=True)
    x.add_argument("--next-hop", default="self")
    x.add_argument("--fleet")
    x.add_argument("--interval", type=float, default=1.0)
    x.add_argument("--count", type=int, help="stop after this many announce/withdraw lines")
    x.set_defaults(func=cmd_frontdoor_exabgp)

    x = sub.add_parser("dns", help="authoritative DNS for the front door's name: the in-service Envoys, rotated")
    x.add_argument("--host", default="127.0.0.1")
    x.add_argument("--port", type=int, default=5353, help="UDP and TCP (0: any free port)")
    x.add_argument("--etcd", help="etcd endpoints, comma-separated (env LBCP_ETCD_ENDPOINTS)")
    x.add_argument("--prefix", help="etcd key prefix (env LBCP_ETCD_PREFIX, default /lbcp/v1/)")
    x.add_argument("--zone", default="example.com")
    x.add_argument("--name", default="www")
    x.add_argument("--ttl", type=int, default=30)
    x.add_argument("--fleet")
    x.add_argument("--interval", type=float, default=0.5, help="seconds between reads of the fleet state")
    x.add_argument(
        "--stale-hold",
        type=float,
        default=60.0,
        help="seconds an Envoy stays in the answer after its registry record vanished without evidence"
        " (a lapsed lease, a replica re-registering; static stability)",
    )
    x.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on --host:PORT (0: any free port)")
    x.set_defaults(func=cmd_dns)
