"""Intent commands: apply, get, delete, backends, and certificate keys (KEK, reseal)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from api.cli._common import client_for, emit, follow_rollout, split_hostport, wait_flag


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true/false. YAML 1.1 (PyYAML's default) reads a
    bare `on`, `off`, `yes`, `no` as booleans, and a retry policy's `on:` key would arrive
    as `True`; here they stay strings (the API still takes "on"/"yes" for a boolean field)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


# A route's traffic policies, as `lbcp get routes` names them (POLICY column).
_ROUTE_POLICIES = (
    "retries",
    "rewrite",
    "request_headers",
    "response_headers",
    "mirror",
    "fault",
    "cors",
    "rate_limit",
)


def _load_docs(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]  # (a SafeLoader)
    for d in docs:
        if not isinstance(d, dict):
            raise SystemExit(f"{path}: every document must be a mapping")
    return docs


def _apply_ops(docs: list[dict[str, Any]], default_kind: str | None) -> list[dict[str, Any]]:
    """Documents → batch operations. A cluster document may carry its `backends` inline:
    they become the cluster's whole member set."""
    ops: list[dict[str, Any]] = []
    for d in docs:
        d = dict(d)
        kind = d.pop("kind", default_kind)
        if kind not in ("cluster", "listener", "route", "backend", "certificate", "fleet"):
            raise SystemExit(
                f"a document needs kind: cluster, backend, listener, route, certificate or fleet (got {kind!r})"
            )
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
    order = {"certificate": -1, "cluster": 0, "backend": 1, "listener": 2, "route": 3, "fleet": 4}
    ops.sort(key=lambda o: order.get(o.get("kind", "backend"), 1))
    return ops


def cmd_apply(args: argparse.Namespace, default_kind: str | None = None) -> int:
    ops = _apply_ops(_load_docs(args.file), default_kind)
    with_dry = {"dry_run": "true"} if args.dry_run else {}
    res = client_for(args).post("/v1/batch", {"operations": ops}, **with_dry)
    for r in res["results"]:
        if r["op"] == "replace_backends":
            print(f"backends of {r['cluster']}: +{len(r['added'])} -{len(r['removed'])} ~{len(r['updated'])}")
        else:
            where = f"{r['cluster']}/" if r.get("cluster") else ""
            print(f"{r['kind']} {where}{r['name']} {r['outcome']}")
    print(f"revision {res['revision']}{' (dry run: nothing written)' if res['dry_run'] else ''}")
    return _waited(args, res["revision"]) if not res["dry_run"] else 0


def _waited(args: argparse.Namespace, revision: int) -> int:
    return follow_rollout(client_for(args), revision, args.wait) if getattr(args, "wait", None) else 0


def cmd_backend_add(args: argparse.Namespace) -> int:
    host, port = split_hostport(args.address)
    body: dict[str, Any] = {
        "name": args.name,
        "address": host,
        "port": port,
        "weight": args.weight,
        "priority": args.priority,
    }
    if args.zone:
        body["zone"] = args.zone
    r = client_for(args).put(f"/v1/clusters/{args.cluster}/backends/{args.name}", body)
    print(
        f"backend {args.cluster}/{args.name} -> {r['address']}:{r['port']} weight {r['weight']} (revision "
        f"{r['revision']})"
    )
    return _waited(args, r["revision"])


# admin_state as a sentence says it: "backend web/a is draining".
_ADMIN_WORDS = {"ready": "ready", "drain": "draining", "maint": "in maintenance"}


def _set_state(state: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        path = f"/v1/clusters/{quote(args.cluster, safe='')}/backends/{quote(args.name, safe='')}"
        r = client_for(args).patch(path, {"admin_state": state})
        admin = r["admin_state"]
        print(f"backend {args.cluster}/{args.name} is {_ADMIN_WORDS.get(admin, admin)} (revision {r['revision']})")
        return _waited(args, r["revision"])

    return run


def cmd_backend_remove(args: argparse.Namespace) -> int:
    r = client_for(args).delete(f"/v1/clusters/{args.cluster}/backends/{args.name}")
    print(f"backend {args.cluster}/{args.name} removed (revision {r['revision']})")
    return _waited(args, r["revision"])


# What `lbcp get` lists: kind -> (usage, what it is). `lbcp get` alone prints this.
KINDS: dict[str, tuple[str, str]] = {
    "clusters": ("clusters [NAME]", "groups of backends and how Envoy balances over them"),
    "backends": ("backends CLUSTER [NAME]", "a cluster's members, with their health as the Envoys see it"),
    "listeners": ("listeners [NAME]", "the addresses and ports the Envoys listen on"),
    "routes": ("routes [NAME]", "which requests on a listener go to which clusters"),
    "certificates": ("certificates [NAME]", "TLS certificates the listeners serve (never their keys)"),
    "fleets": ("fleets [NAME]", "per-fleet capacity, floor (min in service) and rebalancing"),
}


def _kind(text: str) -> str:
    """A kind as typed (singular or plural) -> its plural, the name `lbcp get` lists."""
    plural = text if text.endswith("s") else text + "s"
    return plural if plural in KINDS else text


def cmd_get(args: argparse.Namespace) -> int:
    if args.what is None:
        kinds = [{"kind": k, "usage": f"lbcp get {usage}", "what": what} for k, (usage, what) in KINDS.items()]
        emit(kinds, args.output, ["KIND", "USAGE", "WHAT"], lambda k: [k["kind"], k["usage"], k["what"]])
        return 0
    c = client_for(args)
    what = args.what
    if what == "clusters":
        items = [c.get(f"/v1/clusters/{args.name}")] if args.name else c.list_all("/v1/clusters")
        if args.output == "table":
            for i in items:
                i["_backends"] = len(c.list_all(f"/v1/clusters/{i['name']}/backends"))
        emit(
            items,
            args.output,
            ["NAME", "PROTOCOL", "LB", "BACKENDS", "REVISION"],
            lambda i: [i["name"], i["protocol"], i["load_balancer"]["type"], i.pop("_backends", None), i["revision"]],
        )
    elif what == "backends":
        if not args.name:
            raise SystemExit("which cluster's backends? lbcp get backends CLUSTER [NAME]")
        path = f"/v1/clusters/{quote(args.name, safe='')}/backends"
        if args.member:
            items = [c.get(f"{path}/{quote(args.member, safe='')}", health="true")]
        else:
            items = c.list_all(path, health="true")
        emit(
            items,
            args.output,
            ["NAME", "ADDRESS", "PORT", "WEIGHT", "ZONE", "PRIORITY", "ADMIN", "HEALTH", "REVISION"],
            lambda i: [
                i["name"],
                i["address"],
                i["port"],
                i["weight"],
                i.get("zone") or "-",
                i["priority"],
                i["admin_state"],
                health_summary(i.get("health")),
                i["revision"],
            ],
        )
    elif what == "listeners":
        items = [c.get(f"/v1/listeners/{args.name}")] if args.name else c.list_all("/v1/listeners")
        emit(
            items,
            args.output,
            ["NAME", "ADDRESS", "PORT", "PROTOCOL", "CLUSTER", "FLEETS", "REVISION"],
            lambda i: [
                i["name"],
                i["address"],
                i["port"],
                i["protocol"],
                i.get("cluster") or "-",
                ",".join(i["fleets"]) or "all",
                i["revision"],
            ],
        )
    elif what == "routes":
        items = [c.get(f"/v1/routes/{args.name}")] if args.name else c.list_all("/v1/routes")

        def match(i: dict[str, Any]) -> str:
            m = i["match"]
            return next(f"{k}={m[k]}" for k in ("prefix", "path", "regex") if m.get(k) is not None)

        def answer(i: dict[str, Any]) -> str:
            if i.get("redirect"):
                return f"redirect:{i['redirect'].get('status', 301)}"
            if i.get("direct_response"):
                return f"direct:{i['direct_response']['status']}"
            return ",".join(f"{b['cluster']}:{b['weight']}" for b in i["backends"])

        def policies(i: dict[str, Any]) -> str:
            names = [p for p in _ROUTE_POLICIES if i.get(p)]
            if (i.get("rate_limit") or {}).get("scope") == "fleet":
                names[names.index("rate_limit")] = "rate_limit(fleet)"
            return ",".join(names) or "-"

        emit(
            items,
            args.output,
            ["NAME", "LISTENER", "DOMAINS", "MATCH", "BACKENDS", "POLICY", "REVISION"],
            lambda i: [
                i["name"],
                i["listener"],
                ",".join(i["domains"]),
                match(i),
                answer(i),
                policies(i),
                i["revision"],
            ],
        )
    elif what == "fleets":
        items = [c.get(f"/v1/fleets/{args.name}")] if args.name else c.list_all("/v1/fleets")

        def cap(i: dict[str, Any], key: str) -> Any:
            return (i.get("capacity") or {}).get(key, "-")

        emit(
            items,
            args.output,
            ["NAME", "MIN_IN_SERVICE", "MAX_CONNECTIONS", "HIGH%", "LOW%", "NEW/S", "REVISION"],
            lambda i: [
                i["name"],
                i.get("min_in_service", "-"),
                cap(i, "max_connections_per_envoy"),
                cap(i, "high_water_percent"),
                cap(i, "low_water_percent"),
                cap(i, "max_new_connections_per_second") or "-",
                i["revision"],
            ],
        )
    else:  # certificates (argparse allows nothing else)
        items = [c.get(f"/v1/certificates/{args.name}")] if args.name else c.list_all("/v1/certificates")

        def days_left(i: dict[str, Any]) -> str:
            left = i.get("expires_in_seconds")
            return "?" if left is None else (f"{left / 86400:.1f}" if left > 0 else "EXPIRED")

        emit(
            items,
            args.output,
            ["NAME", "SUBJECT", "SANS", "ISSUER", "NOT_AFTER", "DAYS_LEFT", "REVISION"],
            lambda i: [
                i["name"],
                i.get("subject", "?"),
                ",".join(i.get("sans", [])) or "-",
                i.get("issuer", "?"),
                i.get("not_after", "?"),
                days_left(i),
                i["revision"],
            ],
        )
    return 0


def health_summary(health: dict[str, Any] | None) -> str:
    """A backend's health over the Envoys that report it, for the HEALTH column: the state
    they agree on (`healthy`; any other with how many say so of how many report, `failing
    (2/2)`), or what each says when they disagree (`mixed: 1 failing, 1 healthy`)."""
    if not health:
        return "unknown"
    state = health.get("state") or "unknown"
    counts: dict[str, int] = health.get("counts") or {}
    total = sum(counts.values()) or len(health.get("envoys") or {})
    if state == "mixed":
        parts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return "mixed: " + ", ".join(f"{n} {s}" for s, n in parts)
    if state in ("healthy", "unknown") or not total:
        return state
    return f"{state} ({counts.get(state, total)}/{total})"


def cmd_delete(args: argparse.Namespace) -> int:
    c = client_for(args)
    r = c.delete(f"/v1/{args.kind}s/{args.name}")
    print(f"{args.kind} {args.name} deleted (revision {r['revision']})")
    return _waited(args, r["revision"])


def cmd_kek_generate(args: argparse.Namespace) -> int:
    from controlplane.intent.certificates import generate_kek

    print(generate_kek())
    return 0


def cmd_certificates_reseal(args: argparse.Namespace) -> int:
    """Re-seal every certificate's key with LBCP_KEK (reading older ones via LBCP_KEK_PREVIOUS)."""
    import asyncio

    from controlplane.etcd import Etcd, EtcdConfig
    from controlplane.intent.store import Store

    async def run() -> list[str]:
        etcd = Etcd(EtcdConfig.from_env(args.etcd, args.prefix))
        try:
            return await Store(etcd).reseal_certificates()
        finally:
            await etcd.close()

    names = asyncio.run(run())
    print(f"resealed {len(names)} certificate(s){': ' + ', '.join(names) if names else ''}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "apply", help="apply YAML/JSON documents (kind: cluster|backend|listener|route) in one transaction"
    )
    s.add_argument("-f", "--file", required=True, help="file, or - for stdin")
    s.add_argument("--dry-run", action="store_true")
    wait_flag(s)
    s.set_defaults(func=cmd_apply)

    for kind in ("cluster", "listener", "route"):
        k = sub.add_parser(kind, help=f"manage {kind}s")
        ks = k.add_subparsers(dest="action", required=True)
        a = ks.add_parser(
            "apply",
            help=f"create or replace {kind}s from a file" + (" (with inline backends)" if kind == "cluster" else ""),
        )
        a.add_argument("-f", "--file", required=True)
        a.add_argument("--dry-run", action="store_true")
        wait_flag(a)
        a.set_defaults(func=lambda args, kind=kind: cmd_apply(args, kind))
        d = ks.add_parser("delete", help=f"delete a {kind}")
        d.add_argument("name")
        wait_flag(d)
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
    wait_flag(a)
    a.set_defaults(func=cmd_backend_add)
    for verb, state, what in (
        ("drain", "drain", "stop sending it new requests; the ones it has finish (admin_state drain)"),
        ("undrain", "ready", "put a drained backend back in service (admin_state ready): the inverse of drain"),
        ("maint", "maint", "take it out of service at once (admin_state maint)"),
        ("ready", "ready", "back in service (admin_state ready); the same as undrain"),
    ):
        x = bs.add_parser(verb, help=what)
        x.add_argument("cluster")
        x.add_argument("name")
        wait_flag(x)
        x.set_defaults(func=_set_state(state))
    x = bs.add_parser("remove", help="delete a backend")
    x.add_argument("cluster")
    x.add_argument("name")
    wait_flag(x)
    x.set_defaults(func=cmd_backend_remove)

    g = sub.add_parser(
        "get",
        help="list objects: " + " | ".join(KINDS) + " (`lbcp get` lists them)",
        description="List objects of one kind, or with no kind the kinds there are.",
    )
    g.add_argument("what", nargs="?", type=_kind, choices=tuple(KINDS), metavar="KIND", help=", ".join(KINDS))
    g.add_argument("name", nargs="?", help="one object by name (backends: the cluster)")
    g.add_argument("member", nargs="?", help="backends: one backend of the cluster, by name")
    g.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    g.set_defaults(func=cmd_get)

    x = sub.add_parser("kek", help="key-encryption keys for certificates at rest")
    ks = x.add_subparsers(dest="action", required=True)
    ks.add_parser("generate", help="print a new random KEK (set it as LBCP_KEK)").set_defaults(func=cmd_kek_generate)
    x = sub.add_parser("certificates", help="certificate maintenance")
    cs = x.add_subparsers(dest="action", required=True)
    x = cs.add_parser("reseal", help="re-encrypt every certificate key with LBCP_KEK (after a KEK rotation)")
    x.add_argument("--etcd", help="etcd endpoints, comma-separated (env LBCP_ETCD_ENDPOINTS)")
    x.add_argument("--prefix", help="etcd key prefix (env LBCP_ETCD_PREFIX, default /lbcp/v1/)")
    x.set_defaults(func=cmd_certificates_reseal)
