"""Per-host health from the admin's /clusters (controlplane.xds.load): each Envoy's states,
and one backend's view across Envoys (agreement, `mixed`, `unknown`)."""

from __future__ import annotations

from controlplane.xds.load import MAX_HOSTS, backend_health, host_state, parse_hosts


def _host(address: str, port: int, **status: object) -> dict:
    return {"address": {"socket_address": {"address": address, "port_value": port}}, "health_status": status}


def test_host_states_from_envoys_flags() -> None:
    assert host_state({"eds_health_status": "HEALTHY"}) is None
    assert host_state({"failed_active_health_check": True}) == "failing"
    assert host_state({"failed_outlier_check": True}) == "ejected"
    assert host_state({"failed_active_degraded_check": True}) == "degraded"
    assert host_state({"eds_health_status": "DRAINING", "failed_active_health_check": True}) == "draining"
    assert host_state({"pending_dynamic_removal": True}) == "draining"
    assert host_state({"failed_active_health_check": True, "pending_active_hc": True}) == "pending"
    assert host_state({"eds_health_status": "UNHEALTHY"}) == "failing"


def test_parse_keeps_every_cluster_and_only_hosts_not_healthy() -> None:
    doc = {
        "cluster_statuses": [
            {"name": "web", "host_statuses": [
                _host("10.0.0.1", 80, eds_health_status="HEALTHY"),
                _host("10.0.0.2", 80, failed_active_health_check=True),
            ]},
            {"name": "ext", "host_statuses": [
                {**_host("93.184.215.14", 443, failed_outlier_check=True), "hostname": "api.example.com"},
            ]},
            {"name": "empty"},
        ]
    }  # fmt: skip
    hosts, truncated = parse_hosts(doc)
    assert hosts == {"web": {"10.0.0.2:80": "failing"}, "ext": {"api.example.com:443": "ejected"}, "empty": {}}
    assert not truncated
    many = {"cluster_statuses": [{"name": "big", "host_statuses": [
        _host("10.1.0.1", p, failed_active_health_check=True) for p in range(1, MAX_HOSTS + 10)
    ]}]}  # fmt: skip
    hosts, truncated = parse_hosts(many)
    assert truncated and len(hosts["big"]) == MAX_HOSTS


def test_one_backend_across_envoys() -> None:
    def node(hosts: dict, revision: int = 10, **extra: object) -> dict:
        return {"load": {"hosts": hosts, "hosts_revision": revision, **extra}}

    nodes = {
        "a": node({"web": {"10.0.0.2:80": "failing"}}),
        "b": node({"web": {}}),
        "c": node({"other": {}}),  # does not have the cluster: not counted
        "d": {"load": {"connections": 3}},  # never read (an older bootstrap): not counted
    }
    mixed = backend_health("web", "10.0.0.2", 80, 5, nodes)
    assert mixed == {
        "state": "mixed",
        "envoys": {"a": "failing", "b": "healthy"},
        "counts": {"failing": 1, "healthy": 1},
    }
    assert backend_health("web", "10.0.0.9", 80, 5, nodes)["state"] == "healthy"
    # Written after b's last reading and not listed there: b cannot know yet.
    late = backend_health("web", "10.0.0.2", 80, 11, nodes)
    assert late["envoys"] == {"a": "failing", "b": "unknown"} and late["state"] == "failing"
    assert backend_health("web", "10.0.0.9", 80, 11, nodes)["state"] == "unknown"
    cut = {"a": node({"web": {}}, hosts_truncated=True)}
    assert backend_health("web", "10.0.0.9", 80, 1, cut)["state"] == "unknown"
    assert backend_health("nowhere", "10.0.0.9", 80, 1, nodes) == {"state": "unknown", "envoys": {}, "counts": {}}
