"""xDS: intent translated into Envoy resources and streamed to the fleet.

`resources` translates (pure functions), `snapshot` holds one validated set of encoded
resources, `cache` builds and publishes snapshots from the intent view, `server/` runs the
ADS streams (SotW and delta), `registry` records every connected Envoy in etcd, `probe`
reads each connected Envoy's ops listener, and `replica` wires them into one process.
`client` is the raw ADS client the ring watcher, tests and benchmarks use.
"""
