"""Route configurations (RDS): one virtual host per domain, routes in match order."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from controlplane.intent.model import (
    Route,
)
from controlplane.xds.resources._shared import (
    _dur,
    route_config_name,
)


def _specificity(r: Route) -> tuple[int, int, int, int, str]:
    """Envoy takes the first match; order by `order`, then exact > regex > longest prefix."""
    m = r.match
    if m.path is not None:
        kind, length = 0, len(m.path)
    elif m.regex is not None:
        kind, length = 1, len(m.regex)
    else:
        kind, length = 2, len(m.prefix or "")
    return (r.order, kind, -length, -len(m.headers), r.name)


def _string_match(exact: str | None, prefix: str | None, regex: str | None) -> string_pb2.StringMatcher:
    if exact is not None:
        return string_pb2.StringMatcher(exact=exact)
    if prefix is not None:
        return string_pb2.StringMatcher(prefix=prefix)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex or ""))


def route_entry(r: Route) -> route_components_pb2.Route:
    m = r.match
    match = route_components_pb2.RouteMatch()
    if m.path is not None:
        match.path = m.path
    elif m.regex is not None:
        match.safe_regex.regex = m.regex
    else:
        match.prefix = m.prefix or "/"
    for h in m.headers:
        hm = route_components_pb2.HeaderMatcher(name=h.name, invert_match=h.invert)
        if h.present is not None:
            hm.present_match = h.present
        else:
            hm.string_match.CopyFrom(_string_match(h.exact, h.prefix, h.regex))
        match.headers.append(hm)
    action = route_components_pb2.RouteAction(timeout=_dur(r.timeout) if r.timeout else duration_pb2.Duration())
    if len(r.backends) == 1:
        action.cluster = r.backends[0].cluster
    else:
        for wb in r.backends:
            action.weighted_clusters.clusters.append(
                route_components_pb2.WeightedCluster.ClusterWeight(
                    name=wb.cluster, weight=wrappers_pb2.UInt32Value(value=wb.weight)
                )
            )
    if r.idle_timeout:
        action.idle_timeout.CopyFrom(_dur(r.idle_timeout))
    for hp in r.hash_policies:
        p = route_components_pb2.RouteAction.HashPolicy(terminal=hp.terminal)
        if hp.type == "header":
            p.header.header_name = hp.name or ""
        elif hp.type == "cookie":
            p.cookie.name = hp.name or ""
            if hp.ttl:
                p.cookie.ttl.CopyFrom(_dur(hp.ttl))
            if hp.path:
                p.cookie.path = hp.path
        elif hp.type == "source_ip":
            p.connection_properties.source_ip = True
        else:
            p.query_parameter.name = hp.name or ""
        action.hash_policy.append(p)
    if r.websocket:
        action.upgrade_configs.append(
            route_components_pb2.RouteAction.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
            )
        )
    return route_components_pb2.Route(name=r.name, match=match, route=action)


def route_configuration(listener: str, routes: Iterable[Route]) -> route_pb2.RouteConfiguration:
    """One virtual host per domain named by the listener's routes (so domains never clash)."""
    by_domain: dict[str, list[Route]] = {}
    for r in routes:
        for d in r.domains:
            by_domain.setdefault(d, []).append(r)
    rc = route_pb2.RouteConfiguration(name=route_config_name(listener))
    for domain in sorted(by_domain):
        vh = route_components_pb2.VirtualHost(name=domain, domains=[domain])
        vh.routes.extend(route_entry(r) for r in sorted(by_domain[domain], key=_specificity))
        rc.virtual_hosts.append(vh)
    return rc
