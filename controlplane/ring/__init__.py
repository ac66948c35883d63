"""Consistent-hash rings computed centrally, bit-exact with Envoy.

`tables` builds Maglev and ring-hash tables and answers which backend a key goes to (pure,
imported by `xds.resources` and the admin API); `watch` follows a ring live over xDS as a
non-Envoy consumer would (it is an xDS client, so it sits above `xds`).
"""
