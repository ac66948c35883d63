"""The front tier fed from the fleet's live state: who is in service, and its renders.

`render` decides the in-service set from the fleet registry and renders DNS zones, BIRD,
iptables and nftables; `dns` is `lbcp dns`, an authoritative DNS server fed from etcd
like a replica (not part of the admin API).
"""
