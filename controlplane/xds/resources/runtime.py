"""The fleet's runtime layer (RTDS) and admission filter (ECDS)."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.listener.local_ratelimit.v3 import local_ratelimit_pb2
from envoy.service.runtime.v3 import rtds_pb2 as runtime_pb2
from envoy.type.v3 import token_bucket_pb2
from google.protobuf import duration_pb2, struct_pb2

from controlplane.intent.model import (
    Fleet,
)
from controlplane.xds.resources._shared import (
    ADMISSION,
    RUNTIME_LAYER,
    _any,
)


def runtime_resource(fleet: Fleet | None, listeners: Mapping[str, int | None]) -> runtime_pb2.Runtime:
    """The fleet's RTDS layer (`RUNTIME_LAYER`): each traffic listener's connection limit
    (`envoy.resource_limits.listener.<name>.connection_limit`, which Envoy's listener checks
    on accept and counts refusals as `downstream_cx_overflow`): the lower of its fleet's
    capacity and its own `max_connections` (`listeners`: name -> that, or None). A runtime
    update changes no listener, so a new limit drains nothing. Empty with neither."""
    layer = struct_pb2.Struct()
    capacity = fleet.capacity.max_connections_per_envoy if fleet is not None and fleet.capacity is not None else None
    for name in sorted(listeners):
        limits = [n for n in (capacity, listeners[name]) if n is not None]
        if limits:
            layer.fields[f"envoy.resource_limits.listener.{name}.connection_limit"].number_value = min(limits)
    return runtime_pb2.Runtime(name=RUNTIME_LAYER, layer=layer)


def _admission_filter(rate: int | None, burst: int | None) -> local_ratelimit_pb2.LocalRateLimit:
    # No rate: a bucket no connection rate on one host can empty (the filter stays, so that
    # setting a rate later changes only this extension config, never the listener).
    if rate is None:
        bucket = token_bucket_pb2.TokenBucket(max_tokens=0xFFFFFFFF, fill_interval=duration_pb2.Duration(seconds=1))
        bucket.tokens_per_fill.value = 0xFFFFFFFF
        return local_ratelimit_pb2.LocalRateLimit(stat_prefix="lbcp_admission", token_bucket=bucket)
    # Refill in small steps (Envoy's bucket adds tokens_per_fill every fill_interval, capped at
    # max_tokens): a whole second's tokens at once would let a burst smaller than the rate
    # cap the rate, and let two refills fall into one second.
    interval_ms = max(50, min(1000, 1000 // rate))
    bucket = token_bucket_pb2.TokenBucket(
        max_tokens=burst or rate, fill_interval=duration_pb2.Duration(nanos=interval_ms * 1_000_000)
    )
    if interval_ms == 1000:
        bucket.fill_interval.CopyFrom(duration_pb2.Duration(seconds=1))
    bucket.tokens_per_fill.value = max(1, round(rate * interval_ms / 1000))
    return local_ratelimit_pb2.LocalRateLimit(stat_prefix="lbcp_admission", token_bucket=bucket)


def admission_resource(fleet: Fleet | None) -> extension_pb2.TypedExtensionConfig:
    """The fleet's admission filter (ECDS, `ADMISSION`): new connections per second per Envoy
    listener, a token bucket of `new_connections_burst` (default: one second's worth). A
    connection over the rate is closed at once (Envoy's local_ratelimit listener filter)."""
    cap = fleet.capacity if fleet is not None else None
    rate = cap.max_new_connections_per_second if cap is not None else None
    burst = (cap.new_connections_burst or rate) if cap is not None else None
    return extension_pb2.TypedExtensionConfig(name=ADMISSION, typed_config=_any(_admission_filter(rate, burst)))
