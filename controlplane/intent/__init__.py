"""Intent: what operators asked for, and its way through etcd.

The model (pydantic documents and their rules), the etcd key layout, the transactional
store the admin API writes through, cross-object integrity, certificates, and the
watch-fed read-only view the replicas and the DNS server translate from. Nothing here
imports `xds`, `ring` or `frontdoor`.
"""
