"""Rules that span objects, checked on the part of the world a write touches.

`check(world, changed, related=...)` raises the first class of problem it finds, with every instance of
it: a `ValidationFailed` for the objects being written, or `InUse`/`Conflict` when the
write would break objects that already exist. Backends only need their cluster to exist,
which the store checks itself, so they are not part of the world here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from controlplane.intent.errors import FieldError, InUse, StoreError, ValidationFailed
from controlplane.intent.model import Certificate, Cluster, Kind, Listener, Protocol, Route


class PortConflict(StoreError):
    code = "port-conflict"
    status = 409
    title = "Listener address already in use"


V = TypeVar("V")


class Known(dict[str, V]):
    """The objects of one kind a write read, present or absent: asking about a name it did
    not read is a bug in what the write reads (never a silent "does not exist")."""

    def __init__(self, known: Iterable[str]) -> None:
        super().__init__()
        self.known = set(known)

    def _ask(self, name: object) -> None:
        if name not in self.known:
            raise LookupError(f"{name!r} was not read by this write")

    def get(self, name: str, default: Any = None) -> Any:
        self._ask(name)
        return super().get(name, default)

    def __contains__(self, name: object) -> bool:
        self._ask(name)
        return super().__contains__(name)

    def __getitem__(self, name: str) -> V:
        self._ask(name)
        return super().__getitem__(name)


@dataclass
class World:
    """The final state a write would leave, for the kinds that reference each other."""

    clusters: dict[str, Cluster] = field(default_factory=dict)
    listeners: dict[str, Listener] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)


def _overlap(a: Listener, b: Listener) -> bool:
    if a.port != b.port:
        return False
    fleets_overlap = not a.fleets or not b.fleets or bool(set(a.fleets) & set(b.fleets))
    if not fleets_overlap:
        return False
    if a.address == b.address:
        return True
    # A wildcard bind shares the port with every address of its family (and :: with IPv4 too,
    # on a dual-stack host): Envoy would fail to bind the second listener.
    ia, ib = ipaddress.ip_address(a.address), ipaddress.ip_address(b.address)
    return (
        ia.is_unspecified
        and (ia.version == ib.version or ia.version == 6)
        or (ib.is_unspecified and (ia.version == ib.version or ib.version == 6))
    )


def route_errors(
    route: Route, world: World, *, listener: bool = True, clusters: bool = True, only_cluster: str | None = None
) -> list[FieldError]:
    """What is wrong with `route` given the rest of the world (pointers into the route):
    its listener's part, its clusters' part (or one cluster's) or both."""
    errors: list[FieldError] = []
    lst = world.listeners.get(route.listener) if listener else None
    if listener and lst is None:
        errors.append(FieldError("/listener", f"listener {route.listener!r} does not exist"))
    elif lst is not None and lst.protocol != "http":
        errors.append(
            FieldError("/listener", f"listener {route.listener!r} is a tcp listener; routes need an http one")
        )
    named = [(f"/backends/{i}/cluster", wb.cluster) for i, wb in enumerate(route.backends)]
    named += [(f"/mirror/{i}/cluster", m.cluster) for i, m in enumerate(route.mirror)]
    for pointer, name in named:
        if not clusters or (only_cluster is not None and name != only_cluster):
            continue
        cluster = world.clusters.get(name)
        if cluster is None:
            errors.append(FieldError(pointer, f"cluster {name!r} does not exist"))
            continue
        if cluster.protocol == Protocol.TCP:
            errors.append(
                FieldError(pointer, f"cluster {name!r} speaks tcp; an http route needs an http1 or http2 cluster")
            )
        if route.hash_policies and not cluster.hashing and pointer.startswith("/backends/"):
            errors.append(
                FieldError(
                    "/hash_policies",
                    f"hash_policies need a maglev or ring_hash cluster; cluster {name!r} uses "
                    f"{cluster.load_balancer.type}",
                )
            )
    return errors


def listener_errors(listener: Listener, world: World) -> list[FieldError]:
    return tls_errors(listener, world) + listener_cluster_errors(listener, world)


def listener_cluster_errors(listener: Listener, world: World, only: str | None = None) -> list[FieldError]:
    """A listener's clusters (a tcp listener's target, a tracing cluster), or only `only`."""
    errors: list[FieldError] = []
    if listener.protocol == "tcp" and only in (None, listener.cluster) and listener.cluster not in world.clusters:
        errors.append(FieldError("/cluster", f"cluster {listener.cluster!r} does not exist"))
    traced = listener.tracing.cluster if listener.tracing is not None else None
    if traced is not None and only in (None, traced):
        cluster = world.clusters.get(traced)
        if cluster is None:
            errors.append(FieldError("/tracing/cluster", f"cluster {traced!r} does not exist"))
        elif cluster.protocol != Protocol.HTTP2:
            errors.append(
                FieldError("/tracing/cluster", f"cluster {traced!r} speaks {cluster.protocol}; OTLP/gRPC needs http2")
            )
    return errors


def tls_errors(listener: Listener, world: World) -> list[FieldError]:
    """A listener's TLS part: its certificates exist and no two claim one SNI name."""
    errors: list[FieldError] = []
    if listener.tls is not None:
        if listener.protocol != "http":
            errors.append(
                FieldError("/tls", "TLS termination is for http listeners (a tcp listener passes TLS through)")
            )
        claimed: dict[str, str] = {}
        for i, name in enumerate(listener.tls.certificates):
            cert = world.certificates.get(name)
            if cert is None:
                errors.append(FieldError(f"/tls/certificates/{i}", f"certificate {name!r} does not exist"))
                continue
            # Each certificate's filter chain matches the DNS names of its leaf by SNI: two
            # certificates may not claim the same name on one listener.
            for dns_name in sni_names(cert):
                other = claimed.setdefault(dns_name, name)
                if other != name:
                    errors.append(
                        FieldError(
                            f"/tls/certificates/{i}",
                            f"certificates {other!r} and {name!r} both serve {dns_name!r}: SNI would be ambiguous",
                        )
                    )
    return errors


def sni_names(cert: Certificate) -> tuple[str, ...]:
    """The server names a certificate is chosen for by SNI: its leaf's DNS names."""
    from controlplane.intent.certificates import info

    try:
        return tuple(sorted(set(info(cert.certificate_chain).dns_names)))
    except ValueError:
        return ()


def cluster_errors(cluster: Cluster, world: World) -> list[FieldError]:
    if (
        cluster.tls is not None
        and cluster.tls.client_certificate
        and cluster.tls.client_certificate not in world.certificates
    ):
        return [FieldError("/tls/client_certificate", f"certificate {cluster.tls.client_certificate!r} does not exist")]
    return []


@dataclass
class Related:
    """Who else a write must look at, found through the reference index (`index.py`)."""

    # A changed cluster, listener or certificate -> the objects that use it.
    users: dict[tuple[Kind, str], set[tuple[Kind, str]]] = field(default_factory=dict)
    # A changed listener -> the listeners that may share its port.
    neighbours: dict[str, set[str]] = field(default_factory=dict)


def _route_errors_about(route: Route, kind: Kind, name: str, world: World) -> list[FieldError]:
    """`route`'s errors that `kind name` causes (the rest of the route is not re-checked)."""
    if kind == Kind.LISTENER:
        return [e for e in route_errors(route, world, clusters=False) if e.pointer == "/listener"]
    return route_errors(route, world, listener=False, only_cluster=name)


def check(
    world: World,
    changed: set[tuple[Kind, str]],
    pointers: dict[tuple[Kind, str], str] | None = None,
    related: Related | None = None,
) -> None:
    """Raise if the changed objects are invalid in `world`, or break objects that use them.

    `world` holds the changed objects, what they reference and (`related`) their users and
    port neighbours; nothing else is looked at. `pointers` maps a changed object to where it
    stands in the request (for batches), so errors point into the request body.
    """
    pointers = pointers or {}
    related = related or Related()
    errors: list[FieldError] = []

    def _add(kind: Kind, name: str, errs: list[FieldError]) -> None:
        base = pointers.get((kind, name), "")
        errors.extend(FieldError(base + e.pointer, e.detail) for e in errs)

    for kind, name in sorted(changed):
        if kind == Kind.ROUTE and name in world.routes:
            _add(kind, name, route_errors(world.routes[name], world))
        elif kind == Kind.LISTENER and name in world.listeners:
            _add(kind, name, listener_errors(world.listeners[name], world))
        elif kind == Kind.CLUSTER and name in world.clusters:
            _add(kind, name, cluster_errors(world.clusters[name], world))
    if errors:
        raise ValidationFailed(errors)

    # Objects that already exist and would be broken by this change.
    for kind, name in sorted(changed):
        users = related.users.get((kind, name), set())
        routes = [world.routes[n] for k, n in sorted(users) if k == Kind.ROUTE and n in world.routes]
        listeners = [world.listeners[n] for k, n in sorted(users) if k == Kind.LISTENER and n in world.listeners]
        clusters = [world.clusters[n] for k, n in sorted(users) if k == Kind.CLUSTER and n in world.clusters]
        if kind == Kind.CERTIFICATE:
            broken = sorted(
                {
                    f"listener {lst.name}"
                    for lst in listeners
                    if lst.tls is not None and name in lst.tls.certificates and tls_errors(lst, world)
                }
                | {
                    f"cluster {c.name}"
                    for c in clusters
                    if c.tls is not None and c.tls.client_certificate == name and cluster_errors(c, world)
                }
            )
            if broken:
                what = "deleted" if name not in world.certificates else "changed this way"
                raise InUse(
                    "certificate", f"certificate {name!r} cannot be {what}: it is used by {', '.join(broken)}", broken
                )
        if kind == Kind.CLUSTER:
            broken = sorted(
                {f"route {r.name}" for r in routes if name in r.clusters and _route_errors_about(r, kind, name, world)}
                | {
                    f"listener {lst.name}"
                    for lst in listeners
                    if name in lst.clusters and listener_cluster_errors(lst, world, only=name)
                }
            )
            if broken:
                what = "deleted" if name not in world.clusters else "changed this way"
                raise InUse("cluster", f"cluster {name!r} cannot be {what}: it is used by {', '.join(broken)}", broken)
        elif kind == Kind.LISTENER:
            broken = sorted(
                f"route {r.name}" for r in routes if r.listener == name and _route_errors_about(r, kind, name, world)
            )
            if broken:
                what = "deleted" if name not in world.listeners else "changed this way"
                raise InUse(
                    "listener", f"listener {name!r} cannot be {what}: it is used by {', '.join(broken)}", broken
                )
            mine = world.listeners.get(name)
            if mine is not None:
                for other_name in sorted(related.neighbours.get(name, set())):
                    other = world.listeners.get(other_name)
                    if other is not None and other.name != name and _overlap(mine, other):
                        raise PortConflict(
                            f"listener {name!r} ({mine.address}:{mine.port}) overlaps listener {other.name!r} "
                            f"({other.address}:{other.port}) in a fleet they share",
                            conflicts_with=other.name,
                        )
