"""Rules that span objects, checked on the whole (small) world of clusters, listeners, routes.

`check(world, changed)` raises the first class of problem it finds, with every instance of
it: a `ValidationFailed` for the objects being written, or `InUse`/`Conflict` when the
write would break objects that already exist. Backends only need their cluster to exist,
which the store checks itself, so they are not part of the world here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from controlplane.intent.errors import FieldError, InUse, StoreError, ValidationFailed
from controlplane.intent.model import Certificate, Cluster, Kind, Listener, Protocol, Route


class PortConflict(StoreError):
    code = "port-conflict"
    status = 409
    title = "Listener address already in use"


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


def route_errors(route: Route, world: World) -> list[FieldError]:
    """What is wrong with `route` given the rest of the world (pointers into the route)."""
    errors: list[FieldError] = []
    listener = world.listeners.get(route.listener)
    if listener is None:
        errors.append(FieldError("/listener", f"listener {route.listener!r} does not exist"))
    elif listener.protocol != "http":
        errors.append(
            FieldError("/listener", f"listener {route.listener!r} is a tcp listener; routes need an http one")
        )
    for i, wb in enumerate(route.backends):
        cluster = world.clusters.get(wb.cluster)
        if cluster is None:
            errors.append(FieldError(f"/backends/{i}/cluster", f"cluster {wb.cluster!r} does not exist"))
            continue
        if cluster.protocol == Protocol.TCP:
            errors.append(
                FieldError(
                    f"/backends/{i}/cluster",
                    f"cluster {wb.cluster!r} speaks tcp; an http route needs an http1 or http2 cluster",
                )
            )
        if route.hash_policies and not cluster.hashing:
            errors.append(
                FieldError(
                    "/hash_policies",
                    f"hash_policies need a maglev or ring_hash cluster; cluster {wb.cluster!r} uses "
                    f"{cluster.load_balancer.type}",
                )
            )
    return errors


def listener_errors(listener: Listener, world: World) -> list[FieldError]:
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
    if listener.protocol == "tcp" and listener.cluster not in world.clusters:
        errors.append(FieldError("/cluster", f"cluster {listener.cluster!r} does not exist"))
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


def check(world: World, changed: set[tuple[Kind, str]], pointers: dict[tuple[Kind, str], str] | None = None) -> None:
    """Raise if the changed objects are invalid in `world`, or break objects that use them.

    `pointers` maps a changed object to where it stands in the request (for batches), so
    errors point into the request body.
    """
    pointers = pointers or {}
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
        if kind == Kind.CERTIFICATE:
            users = sorted(
                {
                    f"listener {lst.name}"
                    for lst in world.listeners.values()
                    if lst.tls is not None and name in lst.tls.certificates and listener_errors(lst, world)
                }
                | {
                    f"cluster {c.name}"
                    for c in world.clusters.values()
                    if c.tls is not None and c.tls.client_certificate == name and cluster_errors(c, world)
                }
            )
            if users:
                what = "deleted" if name not in world.certificates else "changed this way"
                raise InUse(
                    "certificate", f"certificate {name!r} cannot be {what}: it is used by {', '.join(users)}", users
                )
        if kind == Kind.CLUSTER:
            users = sorted(
                {
                    f"route {r.name}"
                    for r in world.routes.values()
                    if any(wb.cluster == name for wb in r.backends) and route_errors(r, world)
                }
                | {
                    f"listener {lst.name}"
                    for lst in world.listeners.values()
                    if lst.cluster == name and name not in world.clusters
                }
            )
            if users:
                what = "deleted" if name not in world.clusters else "changed this way"
                raise InUse("cluster", f"cluster {name!r} cannot be {what}: it is used by {', '.join(users)}", users)
        elif kind == Kind.LISTENER:
            broken = sorted(
                f"route {r.name}" for r in world.routes.values() if r.listener == name and route_errors(r, world)
            )
            if broken:
                what = "deleted" if name not in world.listeners else "changed this way"
                raise InUse(
                    "listener", f"listener {name!r} cannot be {what}: it is used by {', '.join(broken)}", broken
                )
            mine = world.listeners.get(name)
            if mine is not None:
                for other in world.listeners.values():
                    if other.name != name and _overlap(mine, other):
                        raise PortConflict(
                            f"listener {name!r} ({mine.address}:{mine.port}) overlaps listener {other.name!r} "
                            f"({other.address}:{other.port}) in a fleet they share",
                            conflicts_with=other.name,
                        )
