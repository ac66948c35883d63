"""fleetsim: an xDS fleet simulator and the fleet-scale benchmarks (issue 6).

    .venv/bin/python -m bench.fleetsim SCENARIO [options]     (see --help)

Simulated Envoys (client.py) are real gRPC ADS clients, delta and SotW, spread over worker
processes (worker.py, fleet.py). Scenarios (scenarios.py) start etcd, the admin API and xDS
replicas as processes (stack.py), drive changes through the API and write JSON and a PNG
to bench/results/.
"""
