"""Moving persistent connections between Envoys: shedding shards of one Envoy's connections
(`shed`), paced by the rebalance and evacuation controllers."""
