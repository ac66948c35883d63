"""`lbcp`: serve the admin API, start a local cluster, and manage intent without curl.

Client commands find the API through --api / LBCP_API (default: .lbcp/cluster.json from
`lbcp up`, else http://127.0.0.1:8080) and the token through --token / LBCP_TOKEN. Errors
print the problem's title and detail and exit 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from .client import ApiProblem, Client, discover


# -- output ----------------------------------------------------------------------------------


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [headers] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _emit(items: list[dict], output: str, headers: list[str], row) -> None:
    if output == "json":
        print(json.dumps(items, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(items, sort_keys=False), end="")
    else:
        print(_table([row(i) for i in items], headers))


# -- commands --------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Client:
    url, token = discover(args.state_dir)
    return Client(args.api or url, args.token or token)


def _load_docs(path: str) -> list[dict]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            raise SystemExit(f"{path}: every document must be a mapping")
    return docs


def _apply_ops(docs: list[dict], default_kind: str | None) -> list[dict]:
    """Documents → batch operations. A cluster document may carry its `backends` inline:
    they become the cluster's whole member set."""
    ops: list[dict] = []
    for d in docs:
        d = dict(d)
        kind = d.pop("kind", default_kind)
        if kind not in ("cluster", "listener", "route", "backend", "certificate"):
            raise SystemExit(f"a document needs kind: cluster, backend, listener, route or certificate (got {kind!r})")
        if kind == "backend":
            cluster = d.pop("cluster", None)
            ops.append({"op": "put", "kind": "backend", "cluster": cluster, "name": d.get("name"), "body": d})
            continue
        backends = d.pop("backends", None) if kind == "cluster" else None
        ops.append({"op": "put", "kind": kind, "name": d.get("name"), "body": d})
        if backends is not None:
            ops.append({"op": "replace_backends", "cluster": d.get("name"), "body": backends})
    # Make-before-use order inside the one transaction does not matter to etcd, but a
    # reader of the results expects clusters first.
    order = {"certificate": -1, "cluster": 0, "backend": 1, "listener": 2, "route": 3}
    ops.sort(key=lambda o: order.get(o.get("kind", "backend"), 1))
    return ops


def cmd_apply(args: argparse.Namespace, default_kind: str | None = None) -> int:
    ops = _apply_ops(_load_docs(args.file), default_kind)
    with_dry = {"dry_run": "true"} if args.dry_run else {}
    res = _client(args).post("/v1/batch", {"operations": ops}, **with_dry)
    for r in res["results"]:
        if r["op"] == "replace_backends":
            print(f"backends of {r['cluster']}: +{len(r['added'])} -{len(r['removed'])} ~{len(r['updated'])}")
        else:
            where = f"{r['cluster']}/" if r.get("cluster") else ""
            print(f"{r['kind']} {where}{r['name']} {r['outcome']}")
    print(f"revision {res['revision']}{' (dry run: nothing written)' if res['dry_run'] else ''}")
    return 0


def _split_hostport(value: str) -> tuple[str, int]:
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"expected ADDRESS:PORT (IPv6 as [::1]:8080), got {value!r}")
    return host, int(port)


def cmd_backend_add(args: argparse.Namespace) -> int:
    host, port = _split_hostport(args.address)
    body: dict[str, Any] = {"name": args.name, "address": host, "port": port, "weight": args.weight, "priority": args.priority}
    if args.zone:
        body["zone"] = args.zone
    r = _client(args).put(f"/v1/clusters/{args.cluster}/backends/{args.name}", body)
    print(f"backend {args.cluster}/{args.name} -> {r['address']}:{r['port']} weight {r['weight']} (revision {r['revision']})")
    return 0


def _set_state(state: str):
    def run(args: argparse.Namespace) -> int:
        r = _client(args).patch(f"/v1/clusters/{args.cluster}/backends/{args.name}", {"admin_state": state})
        print(f"backend {args.cluster}/{args.name} is {r['admin_state']} (revision {r['revision']})")
        return 0

    return run


def cmd_backend_remove(args: argparse.Namespace) -> int:
    r = _client(args).delete(f"/v1/clusters/{args.cluster}/backends/{args.name}")
    print(f"backend {args.cluster}/{args.name} removed (revision {r['revision']})")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    c = _client(args)
    what = args.what
    if what in ("cluster", "clusters"):
        items = [c.get(f"/v1/clusters/{args.name}")] if args.name else c.list_all("/v1/clusters")
        if args.output == "table":
            for i in items:
                i["_backends"] = len(c.list_all(f"/v1/clusters/{i['name']}/backends"))
        _emit(items, args.output, ["NAME", "PROTOCOL", "LB", "BACKENDS", "REVISION"],
              lambda i: [i["name"], i["protocol"], i["load_balancer"]["type"], i.get("_backends"), i["revision"]])
    elif what in ("backend", "backends"):
        if not args.name:
            raise SystemExit("usage: lbcp get backends CLUSTER")
        items = c.list_all(f"/v1/clusters/{args.name}/backends")
        _emit(items, args.output, ["NAME", "ADDRESS", "PORT", "WEIGHT", "ZONE", "PRIORITY", "STATE", "REVISION"],
              lambda i: [i["name"], i["address"], i["port"], i["weight"], i.get("zone") or "-", i["priority"], i["admin_state"], i["revision"]])
    elif what in ("listener", "listeners"):
        items = [c.get(f"/v1/listeners/{args.name}")] if args.name else c.list_all("/v1/listeners")
        _emit(items, args.output, ["NAME", "ADDRESS", "PORT", "PROTOCOL", "CLUSTER", "FLEETS", "REVISION"],
              lambda i: [i["name"], i["address"], i["port"], i["protocol"], i.get("cluster") or "-", ",".join(i["fleets"]) or "all", i["revision"]])
    elif what in ("route", "routes"):
        items = [c.get(f"/v1/routes/{args.name}")] if args.name else c.list_all("/v1/routes")

        def match(i: dict) -> str:
            m = i["match"]
            return next(f"{k}={m[k]}" for k in ("prefix", "path", "regex") if m.get(k) is not None)

        _emit(items, args.output, ["NAME", "LISTENER", "DOMAINS", "MATCH", "BACKENDS", "REVISION"],
              lambda i: [i["name"], i["listener"], ",".join(i["domains"]), match(i),
                         ",".join(f"{b['cluster']}:{b['weight']}" for b in i["backends"]), i["revision"]])
    elif what in ("certificate", "certificates"):
        items = [c.get(f"/v1/certificates/{args.name}")] if args.name else c.list_all("/v1/certificates")

        def days_left(i: dict) -> str:
            left = i.get("expires_in_seconds")
            return "?" if left is None else (f"{left / 86400:.1f}" if left > 0 else "EXPIRED")

        _emit(items, args.output, ["NAME", "SUBJECT", "SANS", "ISSUER", "NOT_AFTER", "DAYS_LEFT", "REVISION"],
              lambda i: [i["name"], i.get("subject", "?"), ",".join(i.get("sans", [])) or "-", i.get("issuer", "?"),
                         i.get("not_after", "?"), days_left(i), i["revision"]])
    else:
        raise SystemExit("lbcp get clusters|backends CLUSTER|listeners|routes|certificates")
    return 0


def cmd_ring_show(args: argparse.Namespace) -> int:
    r = _client(args).get(f"/v1/clusters/{args.cluster}/ring")
    if args.output == "json":
        print(json.dumps(r, indent=2))
        return 0
    size = f"table {r['table_size']}" if r["table_size"] else f"ring {r['ring_size']} points"
    print(f"{r['cluster']}: {r['algorithm']}, {size}, revision {r['revision']}, max/avg {r['max_over_avg']:.3f}")
    print(_table([[b["name"], f"{b['share'] * 100:.2f}%", f"{(b['ideal_share'] or 0) * 100:.2f}%"] for b in r["backends"]],
                 ["BACKEND", "SHARE", "IDEAL"]))
    return 0


def cmd_ring_lookup(args: argparse.Namespace) -> int:
    r = _client(args).post(f"/v1/clusters/{args.cluster}/ring/lookup", {"keys": args.keys})
    for k in args.keys:
        print(f"{k}\t{r['backends'][k]}")
    return 0


def _xds_target(args: argparse.Namespace) -> str:
    if args.xds:
        return args.xds
    state = Path(args.state_dir) / "cluster.json"
    try:
        return json.loads(state.read_text())["xds"][0]
    except (OSError, ValueError, KeyError, IndexError):
        raise SystemExit(f"no --xds given and no local cluster in {state}") from None


def cmd_ring_watch(args: argparse.Namespace) -> int:
    """Subscribe to the cluster's lbcp.v1.HashRing over delta ADS and print every version."""
    import asyncio
    import socket
    import time

    import grpc

    from controlplane.ring import header_hash
    from controlplane.ringwatch import watch

    async def run() -> None:
        node = args.node_id or f"ring-watch-{socket.gethostname()}-{id(args):x}"
        async for u in watch(_xds_target(args), args.cluster, node, limit=args.count):
            stamp = time.strftime("%H:%M:%S")
            if u.ring is None:
                print(f"{stamp} {u.cluster}: no ring (cluster gone or not hashing)", flush=True)
                continue
            r = u.ring.ring
            size = len(r.priorities[0].maglev_table) or len(r.priorities[0].ring_hashes) if r.priorities else 0
            algorithm = "maglev" if r.algorithm == r.MAGLEV else "ring_hash"
            print(f"{stamp} {u.cluster}: {algorithm} revision {r.revision} version {u.version} "
                  f"{len(r.backends)} backends, {size} slots", flush=True)
            for name, share in sorted(u.ring.shares().items()):
                print(f"    {name:<24} {share * 100:6.2f}%")
            for key in args.key or ():
                h = header_hash([key])
                print(f"    key {key!r} -> {u.ring.pick(h) if h is not None else None}")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except grpc.aio.AioRpcError as exc:
        raise SystemExit(f"xDS stream failed: {exc.code().name}: {exc.details()}") from None
    return 0


def cmd_frontdoor(args: argparse.Namespace) -> int:
    """Render the front tier for the in-service Envoys (from the admin API); with --watch,
    re-render every --interval seconds and, when the output changed, replace the file
    (atomically) and run --exec (a sidecar reloading BIND, BIRD or the firewall)."""
    params = {k: v for k, v in (("fleet", args.fleet), ("zone", args.zone), ("name", args.name), ("ttl", args.ttl),
                                ("vip", args.vip), ("port", args.port), ("mode", args.mode), ("node", args.node)) if v is not None}
    client = _client(args)
    last: str | None = None
    renders = 0
    while True:
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
    net = ipaddress.ip_network(args.vip if "/" in args.vip else f"{args.vip}/{128 if ':' in args.vip else 32}", strict=False)
    client = _client(args)
    params = {"fleet": args.fleet} if args.fleet else {}
    announced: bool | None = None
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


def cmd_node_drain(args: argparse.Namespace) -> int:
    c = _client(args)
    params: dict = {"force": "true"} if args.force else {}
    if args.wait:
        params |= {"wait": "withdrawn", "timeout": f"{args.wait}s"}
    body = {"reason": args.reason} if args.reason else None
    r = c.request("POST", f"/v1/fleet/{quote(args.node, safe='')}/drain", json_body=body, params=params).json()
    line = f"node {args.node} drained (revision {r['revision']})"
    if "withdrawal" in r:
        w = r["withdrawal"]
        line += ": withdrawn from the front tier" if w["complete"] else f": not yet withdrawn after {args.wait}s ({w})"
    print(line)
    return 0 if "withdrawal" not in r or r["withdrawal"]["complete"] else 1


def cmd_node_undrain(args: argparse.Namespace) -> int:
    r = _client(args).request("DELETE", f"/v1/fleet/{quote(args.node, safe='')}/drain").json()
    print(f"node {args.node} back in service (revision {r['revision']})")
    return 0


def cmd_kek_generate(args: argparse.Namespace) -> int:
    from controlplane.certificates import generate_kek

    print(generate_kek())
    return 0


def cmd_certificates_reseal(args: argparse.Namespace) -> int:
    """Re-seal every certificate's key with LBCP_KEK (reading older ones via LBCP_KEK_PREVIOUS)."""
    import asyncio

    from controlplane.etcd import Etcd, EtcdConfig
    from controlplane.store import Store

    async def run() -> list[str]:
        etcd = Etcd(EtcdConfig.from_env(args.etcd, args.prefix))
        try:
            return await Store(etcd).reseal_certificates()
        finally:
            await etcd.close()

    names = asyncio.run(run())
    print(f"resealed {len(names)} certificate(s){': ' + ', '.join(names) if names else ''}")
    return 0


def cmd_dns(args: argparse.Namespace) -> int:
    import asyncio

    from controlplane.etcd import Etcd, EtcdConfig

    from .dns import DnsConfig, FrontDoorDns

    cfg = DnsConfig(zone=args.zone, name=args.name, ttl=args.ttl, fleet=args.fleet, host=args.host, port=args.port,
                    interval=args.interval)

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


def cmd_delete(args: argparse.Namespace) -> int:
    c = _client(args)
    r = c.delete(f"/v1/{args.kind}s/{args.name}")
    print(f"{args.kind} {args.name} deleted (revision {r['revision']})")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from controlplane.etcd import EtcdConfig

    from .app import Settings, create_app
    from .auth import Tokens

    settings = Settings(
        etcd=EtcdConfig.from_env(args.etcd, args.prefix),
        tokens=Tokens.from_env(),
        host=args.host,
        port=args.port,
    )
    settings.check()
    # httptools (C) parses HTTP when installed: a third less CPU per request than h11.
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    tls = _tls_files(args)
    ssl_options: dict = {}
    if tls is not None:
        import ssl

        ssl_options = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}
        if tls[2]:
            ssl_options |= {"ssl_ca_certs": tls[2], "ssl_cert_reqs": ssl.CERT_REQUIRED}
    # Tokens travel in headers: access logging stays off so they can never be written out.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False, http=http,
                **ssl_options)
    return 0


def _read_tls(files: tuple[str, str, str | None] | None) -> tuple[bytes, bytes, bytes | None] | None:
    if files is None:
        return None
    cert, key, ca = files
    return Path(cert).read_bytes(), Path(key).read_bytes(), Path(ca).read_bytes() if ca else None


def _node_allow(items: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """FLEET=REGEX (repeatable) -> ServerLimits.node_allow."""
    out: dict[str, list[str]] = {}
    for item in items:
        fleet, sep, pattern = item.partition("=")
        if not sep or not pattern:
            raise SystemExit(f"--allow-node takes FLEET=REGEX, got {item!r}")
        out.setdefault(fleet, []).append(pattern)
    return tuple((f, tuple(p)) for f, p in out.items())


def cmd_xds(args: argparse.Namespace) -> int:
    import asyncio

    from controlplane.etcd import EtcdConfig
    from controlplane.replica import ReplicaConfig, XdsReplica
    from controlplane.server.service import ServerLimits

    cfg = ReplicaConfig(
        etcd=EtcdConfig.from_env(args.etcd, args.prefix),
        host=args.host,
        port=args.port,
        replica_id=args.replica_id or "",
        max_connection_age=args.max_connection_age,
        limits=ServerLimits(max_streams=args.max_streams, node_allow=_node_allow(args.allow_node or [])),
        metrics_port=args.metrics_port,
        tls=_read_tls(_tls_files(args)),
        registry_flush_interval=args.registry_interval,
        probe_interval=args.probe_interval,
    )

    async def run() -> None:
        await XdsReplica(cfg).run_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def _bootstrap_options(args: argparse.Namespace) -> dict:
    from controlplane.bootstrap import XdsTLS

    tls_args = (args.xds_tls_cert, args.xds_tls_key, args.xds_tls_ca)
    if any(tls_args) and not all(tls_args):
        raise SystemExit("--xds-tls-cert, --xds-tls-key and --xds-tls-ca go together")
    return {"admin_port": args.admin_port, "zone": args.zone or "", "delta": not args.sotw,
            "max_connections": args.max_connections, "max_heap_bytes": args.max_heap_mib * 1024**2,
            "ops_port": args.ops_port or None,
            "xds_tls": XdsTLS(*tls_args, sni=args.xds_tls_sni or "") if all(tls_args) else None,
            "public_address": args.public_address or ""}


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from controlplane.bootstrap import XdsEndpoint, render

    xds = [XdsEndpoint(*_split_hostport(e)) for e in args.xds.split(",") if e]
    if args.count is None:
        doc = render(args.node_id, args.fleet, xds, **_bootstrap_options(args))
        text = yaml.safe_dump(doc, sort_keys=False)
        if args.output in (None, "-"):
            print(text, end="")
        else:
            Path(args.output).write_text(text)
        return 0
    # N instances: node ids NODE-0..N-1, each listing the replicas in a rotated order so
    # that first connections spread over the replicas.
    out = Path(args.output or ".")
    out.mkdir(parents=True, exist_ok=True)
    for i in range(args.count):
        rotated = xds[i % len(xds):] + xds[: i % len(xds)]
        doc = render(f"{args.node_id}-{i}", args.fleet, rotated, **_bootstrap_options(args))
        (out / f"{args.node_id}-{i}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {args.count} bootstraps to {out}/")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from .localcluster import up, up_detached

    if args.detach:
        argv = [a for a in sys.argv[1:] if a != "--detach"]
        # --state-dir is a global flag: up_detached passes it before the subcommand itself.
        argv = argv[argv.index("up"):]
        return up_detached(argv, args.state_dir)
    return up(args.state_dir, etcd_nodes=args.etcd_nodes, api_port=args.api_port, envoys=args.envoys,
              backends=0 if args.no_demo else args.backends, demo_intent=not args.no_demo)


def cmd_demo_backend(args: argparse.Namespace) -> int:
    """Run one demo backend in the foreground (docker-compose and k8s demos use it)."""
    import signal
    import threading

    from .demo import DemoBackend

    b = DemoBackend(args.name, args.host, args.port)
    print(f"demo backend {args.name} on {b.address}:{b.port} (HTTP and WebSocket)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    b.stop()
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from .localcluster import down

    return down(args.state_dir)


# -- parser ----------------------------------------------------------------------------------


def _server_flags(s: argparse.ArgumentParser, port: int) -> None:
    """Where a server listens and which etcd it reads (shared by `lbcp api` and `lbcp xds`)."""
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=port)
    s.add_argument("--etcd", help="etcd endpoints, comma-separated (env LBCP_ETCD_ENDPOINTS)")
    s.add_argument("--prefix", help="etcd key prefix (env LBCP_ETCD_PREFIX, default /lbcp/v1/)")
    s.add_argument("--tls-cert", help="serve TLS with this certificate chain (PEM)")
    s.add_argument("--tls-key", help="the certificate's private key (PEM)")
    s.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")


def _tls_files(args: argparse.Namespace) -> tuple[str, str, str | None] | None:
    if not args.tls_cert and not args.tls_key:
        if args.tls_client_ca:
            raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (args.tls_cert and args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    return args.tls_cert, args.tls_key, args.tls_client_ca


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lbcp", description="lbcp: a control plane for Envoy fleets")
    p.add_argument("--api", help="admin API URL (env LBCP_API)")
    p.add_argument("--token", help="bearer token (env LBCP_TOKEN)")
    p.add_argument("--state-dir", default=".lbcp", help="where `lbcp up` keeps its state (default .lbcp)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("api", help="serve the admin API")
    _server_flags(s, 8080)
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_api)

    s = sub.add_parser("xds", help="serve xDS (ADS, SotW and delta) from etcd intent")
    _server_flags(s, 18000)
    s.add_argument("--replica-id", help="name in the fleet registry (default host-pid-port)")
    s.add_argument("--max-streams", type=int, default=20_000)
    s.add_argument("--max-connection-age", type=float, default=1800.0, help="seconds; streams rebalance across replicas")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on --host:PORT (0: any free port)")
    s.add_argument("--allow-node", action="append", metavar="FLEET=REGEX",
                   help="only node ids matching REGEX may join FLEET (repeatable; a fleet not named is open)")
    s.add_argument("--registry-interval", type=float, default=0.2,
                   help="seconds between fleet-registry writes to etcd (rollout status lags by up to this)")
    s.add_argument("--probe-interval", type=float, default=2.0,
                   help="seconds between /healthz probes of each connected Envoy's ops listener (0: off); "
                        "the front tier uses the verdict")
    s.set_defaults(func=cmd_xds)

    s = sub.add_parser("bootstrap", help="render an Envoy bootstrap for one instance")
    s.add_argument("--node-id", required=True)
    s.add_argument("--fleet", default="default", help="node.cluster: which listeners the Envoy gets")
    s.add_argument("--xds", required=True, help="replicas, HOST:PORT[,HOST:PORT...]")
    s.add_argument("--admin-port", type=int, default=9901)
    s.add_argument("--zone")
    s.add_argument("--sotw", action="store_true", help="state-of-the-world ADS instead of delta")
    s.add_argument("--max-connections", type=int, default=100_000, help="overload manager: global downstream connection limit")
    s.add_argument("--max-heap-mib", type=int, default=2048, help="overload manager: heap the fixed-heap monitor measures against")
    s.add_argument("--ops-port", type=int, default=8081, help="ops listener: /healthz for the front tier, /stats/prometheus for Prometheus (0: none)")
    s.add_argument("--public-address", help="the address clients reach this Envoy at (front-tier DNS and L4 rules)")
    s.add_argument("--xds-tls-cert", help="mutual TLS to the replicas: this Envoy's client certificate (path on its host)")
    s.add_argument("--xds-tls-key", help="... its private key")
    s.add_argument("--xds-tls-ca", help="... the CA that signed the replicas' certificate")
    s.add_argument("--xds-tls-sni", help="... SNI to send (default none)")
    s.add_argument("--count", type=int, help="render N instances (NODE-ID-0..N-1) into the --output folder")
    s.add_argument("-o", "--output", help="file (default stdout), or a folder with --count")
    s.set_defaults(func=cmd_bootstrap)

    s = sub.add_parser("up", help="start a local cluster on loopback (what `make run` runs)")
    s.add_argument("--etcd-nodes", type=int, choices=(1, 3), default=1)
    s.add_argument("--envoys", type=int, default=2, help="Envoys to start (they share the demo listener's port)")
    s.add_argument("--backends", type=int, default=3, help="demo backends (HTTP + WebSocket) to start")
    s.add_argument("--no-demo", action="store_true", help="start no demo backends and apply no demo intent")
    s.add_argument("--api-port", type=int)
    s.add_argument("--detach", action="store_true", help="run in the background; stop with `lbcp down`")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("demo-backend", help="run one demo backend: answers HTTP with its name, echoes WebSocket messages")
    s.add_argument("name")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_demo_backend)

    s = sub.add_parser("down", help="stop a cluster started with `lbcp up --detach` (by the PIDs in --state-dir)")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("apply", help="apply YAML/JSON documents (kind: cluster|backend|listener|route) in one transaction")
    s.add_argument("-f", "--file", required=True, help="file, or - for stdin")
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(func=cmd_apply)

    for kind in ("cluster", "listener", "route"):
        k = sub.add_parser(kind, help=f"manage {kind}s")
        ks = k.add_subparsers(dest="action", required=True)
        a = ks.add_parser("apply", help=f"create or replace {kind}s from a file" + (" (with inline backends)" if kind == "cluster" else ""))
        a.add_argument("-f", "--file", required=True)
        a.add_argument("--dry-run", action="store_true")
        a.set_defaults(func=lambda args, kind=kind: cmd_apply(args, kind))
        d = ks.add_parser("delete", help=f"delete a {kind}")
        d.add_argument("name")
        d.set_defaults(func=cmd_delete, kind=kind)

    b = sub.add_parser("backend", help="manage backends")
    bs = b.add_subparsers(dest="action", required=True)
    a = bs.add_parser("add", help="add or replace a backend")
    a.add_argument("cluster")
    a.add_argument("name")
    a.add_argument("address", help="ADDRESS:PORT ([::1]:8080 for IPv6)")
    a.add_argument("--weight", type=int, default=1)
    a.add_argument("--priority", type=int, default=0)
    a.add_argument("--zone")
    a.set_defaults(func=cmd_backend_add)
    for verb, state in (("drain", "drain"), ("maint", "maint"), ("ready", "ready")):
        x = bs.add_parser(verb, help=f"set admin_state={state}")
        x.add_argument("cluster")
        x.add_argument("name")
        x.set_defaults(func=_set_state(state))
    x = bs.add_parser("remove", help="delete a backend")
    x.add_argument("cluster")
    x.add_argument("name")
    x.set_defaults(func=cmd_backend_remove)

    rg = sub.add_parser("ring", help="the consistent-hash ring every Envoy builds for a cluster")
    rs = rg.add_subparsers(dest="action", required=True)
    x = rs.add_parser("show", help="backends' shares of the key space")
    x.add_argument("cluster")
    x.add_argument("-o", "--output", choices=("table", "json"), default="table")
    x.set_defaults(func=cmd_ring_show)
    x = rs.add_parser("lookup", help="which backend each key goes to (the hash-policy value: header, cookie, ...)")
    x.add_argument("cluster")
    x.add_argument("keys", nargs="+")
    x.set_defaults(func=cmd_ring_lookup)
    x = rs.add_parser("watch", help="follow the ring live over xDS (lbcp.v1.HashRing), as a non-Envoy consumer would")
    x.add_argument("cluster")
    x.add_argument("--xds", help="an xDS replica HOST:PORT (default: the local cluster's first)")
    x.add_argument("--key", action="append", help="also show where this hash-header value goes (repeatable)")
    x.add_argument("--count", type=int, help="stop after this many updates")
    x.add_argument("--node-id", help="node id to present (default ring-watch-HOST-…)")
    x.set_defaults(func=cmd_ring_watch)

    fd = sub.add_parser("frontdoor", help="the front tier for the in-service Envoys: DNS, BIRD, iptables, nftables")
    fds = fd.add_subparsers(dest="action", required=True)
    x = fds.add_parser("render", help="render one format (docs/frontdoor.md)")
    x.add_argument("--format", required=True, choices=("json", "dns", "iptables", "nftables", "bird"))
    x.add_argument("--fleet")
    x.add_argument("--zone")
    x.add_argument("--name")
    x.add_argument("--ttl", type=int)
    x.add_argument("--vip")
    x.add_argument("--port", type=int)
    x.add_argument("--mode", help="iptables: nth|random; nftables: hash|maglev|numgen")
    x.add_argument("--node", help="bird: the Envoy host to render for")
    x.add_argument("-o", "--output", help="file (default stdout); replaced atomically")
    x.add_argument("--watch", action="store_true", help="keep going: re-render when the in-service set changes")
    x.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between looks")
    x.add_argument("--exec", help="--watch: run this command after each change (e.g. 'birdc configure')")
    x.add_argument("--count", type=int, help="--watch: stop after this many renders")
    x.set_defaults(func=cmd_frontdoor)
    x = fds.add_parser("exabgp", help="an ExaBGP process: announce/withdraw the anycast VIP as --node enters/leaves service")
    x.add_argument("--node", required=True)
    x.add_argument("--vip", required=True)
    x.add_argument("--next-hop", default="self")
    x.add_argument("--fleet")
    x.add_argument("--interval", type=float, default=1.0)
    x.add_argument("--count", type=int, help="stop after this many announce/withdraw lines")
    x.set_defaults(func=cmd_frontdoor_exabgp)

    nd = sub.add_parser("node", help="one Envoy of the fleet: drain it out of the front tier, or put it back")
    nds = nd.add_subparsers(dest="action", required=True)
    x = nds.add_parser("drain", help="fail its /healthz so DNS, anycast and L4 withdraw it; connections stay")
    x.add_argument("node")
    x.add_argument("--reason")
    x.add_argument("--force", action="store_true", help="drain a node id that is not connected (yet)")
    x.add_argument("--wait", type=float, help="seconds to wait until it is withdrawn (exit 1 if not)")
    x.set_defaults(func=cmd_node_drain)
    x = nds.add_parser("undrain", help="put a drained node back in service")
    x.add_argument("node")
    x.set_defaults(func=cmd_node_undrain)

    x = sub.add_parser("kek", help="key-encryption keys for certificates at rest")
    ks = x.add_subparsers(dest="action", required=True)
    ks.add_parser("generate", help="print a new random KEK (set it as LBCP_KEK)").set_defaults(func=cmd_kek_generate)
    x = sub.add_parser("certificates", help="certificate maintenance")
    cs = x.add_subparsers(dest="action", required=True)
    x = cs.add_parser("reseal", help="re-encrypt every certificate key with LBCP_KEK (after a KEK rotation)")
    x.add_argument("--etcd", help="etcd endpoints, comma-separated (env LBCP_ETCD_ENDPOINTS)")
    x.add_argument("--prefix", help="etcd key prefix (env LBCP_ETCD_PREFIX, default /lbcp/v1/)")
    x.set_defaults(func=cmd_certificates_reseal)

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
    x.set_defaults(func=cmd_dns)

    g = sub.add_parser("get", help="list objects: clusters | backends CLUSTER | listeners | routes | certificates")
    g.add_argument("what")
    g.add_argument("name", nargs="?")
    g.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    g.set_defaults(func=cmd_get)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ApiProblem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
