"""Server commands: the admin API, an xDS replica, Envoy bootstraps, a demo backend."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from api.cli._common import read_tls, server_flags, split_hostport, tls_files


def cmd_api(args: argparse.Namespace) -> int:
    from api.app import Settings
    from api.auth import Tokens
    from controlplane.etcd import EtcdConfig

    settings = Settings(
        etcd=EtcdConfig.from_env(args.etcd, args.prefix),
        tokens=Tokens.from_env(),
        host=args.host,
        port=args.port,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_concurrency=args.max_concurrency,
        max_connections=args.max_connections,
    )
    settings.check()
    tls = tls_files(args)
    ssl_options: dict[str, Any] = {}
    if tls is not None:
        import ssl

        ssl_options = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]}
        if tls[2]:
            ssl_options |= {"ssl_ca_certs": tls[2], "ssl_cert_reqs": ssl.CERT_REQUIRED}
    # Tokens travel in headers: access logging stays off so they can never be written out.
    options = {"log_level": args.log_level, "access_log": False, **ssl_options}
    if args.workers > 1:
        from controlplane.workers import WorkerSpec, serve

        return serve(
            "API",
            [WorkerSpec(f"api-{i}", _api_worker, (settings, options)) for i in range(args.workers)],
        )
    import uvicorn

    from api.app import create_app
    from api.serving import uvicorn_config

    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, **options))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0


def _api_worker(settings: Any, options: dict[str, Any]) -> None:
    """One `lbcp api --workers N` process: a whole API (its own etcd client and group
    commit) on its own SO_REUSEPORT socket; the kernel spreads connections over them."""
    import dataclasses
    import socket

    import uvicorn

    from api.app import create_app
    from api.serving import fit_descriptors, uvicorn_config

    max_connections, backlog = fit_descriptors(settings.max_connections)
    settings = dataclasses.replace(settings, max_connections=max_connections)

    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every response waits ~40 ms for Nagle (uvicorn's own --workers socket).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(backlog)
    config = uvicorn_config(create_app(settings), settings, backlog=backlog, **options)
    uvicorn.Server(config).run(sockets=[sock])


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _flush_interval(text: str) -> float:
    """--stats-flush-interval: seconds, within what Envoy accepts."""
    from controlplane.xds.bootstrap import STATS_FLUSH_INTERVAL_RANGE

    low, high = STATS_FLUSH_INTERVAL_RANGE
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not low <= round(value, 3) <= high:
        raise argparse.ArgumentTypeError(f"must be {low:g} to {high:g} seconds, got {text}")
    return value


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
    from controlplane.xds.identity import IdentityRule
    from controlplane.xds.probe import FrontPolicy
    from controlplane.xds.replica import ReplicaConfig, XdsReplica
    from controlplane.xds.server.admission import ServerLimits
    from controlplane.xds.server.common import RequestBounds

    try:  # configuration errors fail here, at start, with the flag's name
        IdentityRule.parse(args.xds_identity)
        FrontPolicy.parse(args.front_cidr or [], args.front_unprobed or [])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    bounds = RequestBounds(
        max_metadata_bytes=args.max_metadata_bytes,
        max_names_per_type=args.max_subscriptions,
        max_nack_message=args.max_nack_message,
    )
    cfg = ReplicaConfig(
        etcd=EtcdConfig.from_env(args.etcd, args.prefix),
        host=args.host,
        port=args.port,
        replica_id=args.replica_id or "",
        max_connection_age=args.max_connection_age,
        limits=ServerLimits(
            max_streams=args.max_streams,
            node_allow=_node_allow(args.allow_node or []),
            bounds=bounds,
            max_request_bytes=args.max_request_bytes,
        ),
        metrics_port=args.metrics_port,
        tls=read_tls(tls_files(args)),
        registry_flush_interval=args.registry_interval,
        probe_interval=args.probe_interval,
        load_interval=args.load_interval,
        identity=args.xds_identity,
        front_cidrs=tuple(args.front_cidr or ()),
        front_unprobed=tuple(args.front_unprobed or ()),
        insecure=args.insecure,
    )
    cfg.check()
    if args.workers > 1:
        from controlplane.xds.workers import run_workers

        return run_workers(cfg, args.workers)

    async def run() -> None:
        await XdsReplica(cfg).run_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def _bootstrap_options(args: argparse.Namespace, node_id: str) -> dict[str, Any]:
    from controlplane.xds.bootstrap import XdsTLS

    # `{node}` in a path is the instance's node id: each Envoy presents its own certificate.
    cert, key, ca = (
        (a or "").replace("{node}", node_id) for a in (args.xds_tls_cert, args.xds_tls_key, args.xds_tls_ca)
    )
    tls_args = (cert, key, ca)
    if any(tls_args) and not all(tls_args):
        raise SystemExit("--xds-tls-cert, --xds-tls-key and --xds-tls-ca go together")
    if cert and Path(cert).is_file():
        _check_identity(Path(cert), node_id, args.fleet, args.xds_identity)
    return {
        "admin_port": args.admin_port,
        "zone": args.zone or "",
        "delta": not args.sotw,
        "max_connections": args.max_connections,
        "max_heap_bytes": args.max_heap_mib * 1024**2,
        "ops_port": args.ops_port or None,
        "xds_tls": XdsTLS(cert, key, ca, sni=args.xds_tls_sni or "") if all(tls_args) else None,
        "public_address": args.public_address or "",
        # Unset: the renderer's default (bootstrap.STATS_FLUSH_INTERVAL).
        **({"stats_flush_interval": args.stats_flush_interval} if args.stats_flush_interval is not None else {}),
    }


def _check_identity(cert: Path, node_id: str, fleet: str, rule: str) -> None:
    """The certificate at hand must name the node the way the replicas expect (else they refuse it)."""
    from controlplane.xds.identity import IdentityError, IdentityRule

    try:
        IdentityRule.parse(rule).check(cert.read_bytes(), node_id, fleet)
    except (IdentityError, ValueError) as exc:
        raise SystemExit(f"{cert}: {exc} (see lbcp pki envoy, docs/security.md)") from None


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from controlplane.xds.bootstrap import XdsEndpoint, render

    xds = [XdsEndpoint(*split_hostport(e)) for e in args.xds.split(",") if e]
    if args.count is None:
        doc = render(args.node_id, args.fleet, xds, **_bootstrap_options(args, args.node_id))
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
        rotated = xds[i % len(xds) :] + xds[: i % len(xds)]
        node_id = f"{args.node_id}-{i}"
        doc = render(node_id, args.fleet, rotated, **_bootstrap_options(args, node_id))
        (out / f"{args.node_id}-{i}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {args.count} bootstraps to {out}/")
    return 0


def cmd_demo_backend(args: argparse.Namespace) -> int:
    """Run one demo backend in the foreground (docker-compose and k8s demos use it)."""
    import signal
    import threading

    from api.localcluster.demo import DemoBackend

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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("api", help="serve the admin API")
    server_flags(s, 8080)
    s.add_argument("--log-level", default="info")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes sharing --port (SO_REUSEPORT), each its own etcd client, supervised and restarted "
        "if one dies (/metrics answers for the process that served the scrape)",
    )
    s.add_argument(
        "--header-timeout",
        type=_positive(float),
        default=10.0,
        metavar="SECONDS",
        help="a connection that has not sent a whole request head this long after it opened (or after its "
        "last response) is closed",
    )
    s.add_argument(
        "--body-timeout",
        type=_positive(float),
        default=30.0,
        metavar="SECONDS",
        help="a request body must arrive whole within this after its head (else 408 body-timeout)",
    )
    s.add_argument(
        "--max-concurrency",
        type=_positive(int),
        default=256,
        metavar="N",
        help="requests in flight per process; beyond it 503 overloaded with Retry-After "
        "(/healthz, /metrics and /v1/events streams are not counted)",
    )
    s.add_argument(
        "--max-connections",
        type=_positive(int),
        default=2048,
        metavar="N",
        help="open connections per process; beyond it the connection that has waited longest for its request "
        "head is closed (RLIMIT_NOFILE is raised to fit, or this lowered)",
    )
    s.set_defaults(func=cmd_api)

    s = sub.add_parser("xds", help="serve xDS (ADS, SotW and delta) from etcd intent")
    server_flags(s, 18000)
    s.add_argument("--replica-id", help="name in the fleet registry (default host-pid-port)")
    s.add_argument("--max-streams", type=int, default=20_000, help="per worker")
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="replica processes sharing --port (SO_REUSEPORT), supervised and restarted if one dies; "
        "each is replica ID-wI with metrics on --metrics-port+I",
    )
    s.add_argument(
        "--max-connection-age", type=float, default=1800.0, help="seconds; streams rebalance across replicas"
    )

    s.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on --host:PORT (0: any free port)")
    s.add_argument(
        "--allow-node",
        action="append",
        metavar="FLEET=REGEX",
        help="only node ids matching REGEX may join FLEET (repeatable; a fleet not named is open)",
    )
    s.add_argument(
        "--registry-interval",
        type=float,
        default=0.2,
        help="seconds between fleet-registry writes to etcd (rollout status lags by up to this)",
    )
    s.add_argument(
        "--probe-interval",
        type=float,
        default=2.0,
        help="seconds between /healthz probes of each connected Envoy's ops listener (0: off); "
        "the front tier uses the verdict",
    )
    s.add_argument(
        "--load-interval",
        type=float,
        default=2.0,
        help="seconds between live-load samples of each connected Envoy (its ops listener's /lbcp/load; 0: off)",
    )
    s.add_argument(
        "--xds-identity",
        default="spiffe",
        metavar="RULE",
        help="with --tls-client-ca: what the client certificate must name for a node id: 'spiffe' "
        "(URI SAN spiffe://lbcp/fleet/{fleet}/node/{node}), 'dns' (DNS SAN {node}) or a template",
    )
    s.add_argument(
        "--front-cidr",
        action="append",
        metavar="FLEET=CIDR",
        help="a node's public_address enters the front tier only inside these (repeatable; FLEET may be *); "
        "without one the stream's peer address is used",
    )
    s.add_argument(
        "--front-unprobed",
        action="append",
        metavar="FLEET",
        help="put FLEET's nodes in service without probing their /healthz (fleets without an ops listener; "
        "repeatable, * for all)",
    )
    s.add_argument("--max-subscriptions", type=int, default=20_000, help="resource names per type per stream")
    s.add_argument("--max-metadata-bytes", type=int, default=8192, help="node metadata a stream may send")
    s.add_argument("--max-nack-message", type=int, default=4096, help="characters of a NACK message kept")
    s.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024, help="largest xDS request accepted")
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without mutual TLS (anyone who reaches it reads every fleet's config)",
    )
    s.set_defaults(func=cmd_xds)

    s = sub.add_parser("bootstrap", help="render an Envoy bootstrap for one instance")
    s.add_argument("--node-id", required=True)
    s.add_argument("--fleet", default="default", help="node.cluster: which listeners the Envoy gets")
    s.add_argument("--xds", required=True, help="replicas, HOST:PORT[,HOST:PORT...]")
    s.add_argument("--admin-port", type=int, default=9901)
    s.add_argument("--zone")
    s.add_argument("--sotw", action="store_true", help="state-of-the-world ADS instead of delta")
    s.add_argument(
        "--max-connections", type=int, default=100_000, help="overload manager: global downstream connection limit"
    )
    s.add_argument(
        "--max-heap-mib", type=int, default=2048, help="overload manager: heap the fixed-heap monitor measures against"
    )
    s.add_argument(
        "--ops-port",
        type=int,
        default=8081,
        help="ops listener: /healthz for the front tier, /stats/prometheus for Prometheus (0: none)",
    )
    s.add_argument("--public-address", help="the address clients reach this Envoy at (front-tier DNS and L4 rules)")
    s.add_argument(
        "--stats-flush-interval",
        type=_flush_interval,
        metavar="SECONDS",
        help="Envoy's stats flush (histograms, server.* gauges), a main-thread stall that grows with the stats: "
        "~250 ms at 10,000 clusters (default 60; Envoy's own 5; 0.001 to 299.999)",
    )
    s.add_argument(
        "--xds-tls-cert", help="mutual TLS to the replicas: this Envoy's client certificate (path on its host)"
    )
    s.add_argument("--xds-tls-key", help="... its private key ({node} in a path: the node id)")
    s.add_argument(
        "--xds-identity",
        default="spiffe",
        help="the replicas' --xds-identity: a readable --xds-tls-cert must name the node that way",
    )
    s.add_argument("--xds-tls-ca", help="... the CA that signed the replicas' certificate")
    s.add_argument("--xds-tls-sni", help="... SNI to send (default none)")
    s.add_argument("--count", type=int, help="render N instances (NODE-ID-0..N-1) into the --output folder")
    s.add_argument("-o", "--output", help="file (default stdout), or a folder with --count")
    s.set_defaults(func=cmd_bootstrap)

    s = sub.add_parser(
        "demo-backend", help="run one demo backend: answers HTTP with its name, echoes WebSocket messages"
    )
    s.add_argument("name")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_demo_backend)
