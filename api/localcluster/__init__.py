"""The local cluster: `lbcp up`/`down`, the processes it starts, and the demo backend.

`procs` starts and stops etcd and Envoy processes by PID; `lbcp up`, the tests and the
benchmarks all use it. `cluster` is `lbcp up`/`lbcp down`; `demo` the demo backend.
"""
