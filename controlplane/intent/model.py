"""The operator's intent: clusters, backends, listeners and routes (pydantic v2).

Each model validates one object on its own. Rules that span objects (a route naming a
missing cluster, a hash policy on a round-robin cluster) live in `controlplane.intent.integrity`,
because they need the rest of the intent to check.

Every model forbids unknown fields: a typo must be an error, never a silently ignored key.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from enum import StrEnum
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=rf"^{_LABEL}$"),
    Field(description="DNS-label-like name: 1-63 chars of [a-z0-9-], starting and ending alphanumeric."),
]
BackendName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"),
    Field(description="Stable id of a backend, unique in its cluster: 1-128 chars of [A-Za-z0-9-_.]."),
]
FleetName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"),
]

# --- durations ------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_DURATION_S = 365 * 24 * 3600.0


def parse_duration(value: Any) -> float:
    """'250ms', '5s', '1.5m', '2h' or a number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a string like '5s' or '250ms', or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if not m:
            raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m or h, e.g. '5s' or '250ms'")
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError("a duration is a string like '5s' or '250ms', or a number of seconds")
    if not 0 < seconds <= _MAX_DURATION_S:
        raise ValueError("a duration must be greater than 0 and at most 365 days")
    if round(seconds * 1000) < 1:
        raise ValueError("a duration must be at least 1ms")
    return round(seconds, 3)


def format_duration(seconds: float) -> str:
    """Canonical text form: whole seconds as 's', anything finer as 'ms'."""
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(json_schema_extra={"type": "string", "examples": ["5s", "250ms"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


# --- clusters -------------------------------------------------------------------------------


class Protocol(StrEnum):
    HTTP1 = "http1"
    HTTP2 = "http2"
    TCP = "tcp"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


# Envoy's own bounds (maglev.proto, ring_hash.proto).
MAGLEV_MAX_TABLE_SIZE = 5_000_011
RING_HASH_MAX_SIZE = 8_388_608


class RoundRobin(_Model):
    type: Literal["round_robin"] = "round_robin"


class LeastRequest(_Model):
    type: Literal["least_request"] = "least_request"
    choice_count: int = Field(2, ge=2, le=100, description="Hosts sampled per pick (power of N choices).")


class RandomLB(_Model):
    type: Literal["random"] = "random"


class Maglev(_Model):
    type: Literal["maglev"] = "maglev"
    table_size: int = Field(65537, ge=2, le=MAGLEV_MAX_TABLE_SIZE, description="Prime lookup table size.")

    @field_validator("table_size")
    @classmethod
    def _prime(cls, v: int) -> int:
        if not _is_prime(v):
            raise ValueError(f"table_size must be a prime number (e.g. 65537 or 655373), got {v}")
        return v


class RingHash(_Model):
    type: Literal["ring_hash"] = "ring_hash"
    minimum_ring_size: int = Field(1024, ge=1, le=RING_HASH_MAX_SIZE)
    maximum_ring_size: int = Field(8_388_608, ge=1, le=RING_HASH_MAX_SIZE)
    hash_function: Literal["xx_hash", "murmur_hash_2"] = "xx_hash"

    @model_validator(mode="after")
    def _bounds(self) -> RingHash:
        if self.minimum_ring_size > self.maximum_ring_size:
            raise ValueError("minimum_ring_size must not exceed maximum_ring_size")
        return self


LoadBalancer = Annotated[
    RoundRobin | LeastRequest | RandomLB | Maglev | RingHash,
    Field(discriminator="type"),
]
HASHING_LOAD_BALANCERS = ("maglev", "ring_hash")


class ActiveHealthCheck(_Model):
    type: Literal["http", "tcp"]
    path: str | None = Field(None, description="HTTP path to GET (http only), e.g. '/healthz'.")
    host: str | None = Field(None, max_length=253, description="Host header for http checks.")
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=lambda: [200], max_length=32)
    interval: Duration = 5.0
    timeout: Duration = 2.0
    healthy_threshold: int = Field(2, ge=1, le=100)
    unhealthy_threshold: int = Field(3, ge=1, le=100)

    @model_validator(mode="after")
    def _shape(self) -> ActiveHealthCheck:
        if self.type == "http":
            if not self.path or not self.path.startswith("/"):
                raise ValueError("an http health check needs a path starting with '/'")
        else:
            if self.path is not None or self.host is not None:
                raise ValueError("a tcp health check takes no path or host")
        if self.timeout > self.interval:
            raise ValueError("timeout must not exceed interval")
        return self


class PassiveHealthCheck(_Model):
    consecutive_5xx: int = Field(5, ge=1, le=1000)
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: int = Field(10, ge=0, le=100)


class HealthCheck(_Model):
    active: ActiveHealthCheck | None = None
    passive: PassiveHealthCheck | None = None


class CircuitBreakers(_Model):
    max_connections: int | None = Field(None, ge=1, le=100_000_000)
    max_pending_requests: int | None = Field(None, ge=1, le=100_000_000)
    max_requests: int | None = Field(None, ge=1, le=100_000_000)
    max_retries: int | None = Field(None, ge=0, le=100_000_000)


class ClusterTLS(_Model):
    """TLS from Envoy to this cluster's backends."""

    sni: str | None = Field(
        None, max_length=253, description="Server name sent to backends (and checked against their certificate)."
    )
    ca_bundle: str | None = Field(
        None, max_length=262144, description="PEM CA certificates that must have signed the backends' certificates."
    )
    client_certificate: Name | None = Field(
        None, description="A certificate (by name) presented to backends that require client certificates."
    )
    insecure_skip_verify: bool = Field(
        False, description="Encrypt without verifying backends (no ca_bundle). Not for production."
    )

    @model_validator(mode="after")
    def _verification(self) -> ClusterTLS:
        if self.ca_bundle is None and not self.insecure_skip_verify:
            raise ValueError("give ca_bundle (PEM) to verify backends, or set insecure_skip_verify")
        if self.ca_bundle is not None:
            from cryptography import x509

            try:
                x509.load_pem_x509_certificates(self.ca_bundle.encode())
            except ValueError as exc:
                raise ValueError(f"ca_bundle is not PEM certificates: {exc}") from None
        return self


class Cluster(_Model):
    """A named group of backends and how to balance over them."""

    name: Name
    protocol: Protocol = Protocol.HTTP1
    discovery: Literal["eds", "dns"] = Field(
        "eds",
        description=(
            "How Envoy learns the backends: eds (default) pushes each backend's IP address over xDS,"
            " as intent changes; dns makes a STRICT_DNS cluster that Envoy resolves itself, for"
            " backends named by hostname (Envoy cannot take hostnames over EDS). Switching replaces"
            " the cluster on every Envoy: its connections, health-check and outlier state start over."
        ),
    )
    load_balancer: LoadBalancer = Field(default_factory=RoundRobin)
    connect_timeout: Duration = 5.0
    health_check: HealthCheck | None = None
    circuit_breakers: CircuitBreakers | None = None
    tls: ClusterTLS | None = None

    @property
    def hashing(self) -> bool:
        return self.load_balancer.type in HASHING_LOAD_BALANCERS


# --- backends -------------------------------------------------------------------------------

_HOSTNAME_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")
METADATA_MAX_KEYS = 32
METADATA_MAX_BYTES = 4096


def _is_ip(value: str) -> bool:
    """An IPv4/IPv6 literal? `inet_pton` in C first: every stored backend is decoded, and
    `ipaddress` costs more than the rest of the decode (a 100,000-backend intent)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
            return True
        except OSError:
            pass
    if "%" not in value:
        return False
    try:  # a scoped IPv6 address (fe80::1%eth0): ipaddress knows them, inet_pton does not
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _check_address(value: str) -> str:
    """An IPv4/IPv6 literal (canonicalised) or an RFC 1123 hostname."""
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
            return value  # already a canonical IPv4 address, as every stored one is
    except OSError:
        pass
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    host = value.rstrip(".") if value.endswith(".") else value
    if len(host) > 253 or not host or not all(_HOSTNAME_LABEL.match(p) for p in host.split(".")):
        raise ValueError(f"{value!r} is neither an IPv4/IPv6 address nor a valid hostname")
    if all(p.isdigit() for p in host.split(".")):
        raise ValueError(f"{value!r} is not a valid IPv4 address")
    return host.lower()


Address = Annotated[str, BeforeValidator(lambda v: v if not isinstance(v, str) else v.strip()), Field(max_length=253)]


class AdminState(StrEnum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


Alpn = Literal["h2", "http/1.1"]
MetadataValue = Annotated[str, Field(max_length=1024)] | int | float | bool


class Backend(_Model):
    """One member of a cluster."""

    name: BackendName
    address: Address = Field(description="IPv4/IPv6 literal or hostname.")
    port: int = Field(ge=1, le=65535)
    weight: int = Field(1, ge=1, le=1_000_000)
    zone: (
        Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None
    ) = None
    priority: int = Field(0, ge=0, le=127)
    admin_state: AdminState = AdminState.READY
    metadata: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], MetadataValue] = Field(
        default_factory=dict,
        description=f"Free-form labels: at most {METADATA_MAX_KEYS} keys, {METADATA_MAX_BYTES} bytes.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _check_address(v)

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            return v  # most backends: no need to encode anything to measure it
        if len(v) > METADATA_MAX_KEYS:
            raise ValueError(f"metadata has {len(v)} keys; at most {METADATA_MAX_KEYS} are allowed")
        size = len(json.dumps(v, separators=(",", ":")).encode())
        if size > METADATA_MAX_BYTES:
            raise ValueError(f"metadata is {size} bytes of JSON; at most {METADATA_MAX_BYTES} are allowed")
        return v

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.address)


# --- listeners ------------------------------------------------------------------------------


class ListenerTLS(_Model):
    """TLS termination: the first certificate is the default; each certificate also serves
    the DNS names of its leaf by SNI (one filter chain per certificate)."""

    certificates: list[Name] = Field(
        min_length=1, max_length=64, description="Names of certificates to serve; the first is the default."
    )
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")
    max_version: Literal["1.2", "1.3"] = "1.3"
    alpn: list[Alpn] = Field(
        default_factory=lambda: list[Alpn](("h2", "http/1.1")),
        max_length=2,
        description="Protocols offered by ALPN, in preference order.",
    )

    @field_validator("certificates")
    @classmethod
    def _unique_certificates(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("certificates must not repeat a name")
        return v

    @model_validator(mode="after")
    def _versions(self) -> ListenerTLS:
        if self.min_version > self.max_version:
            raise ValueError("min_version is above max_version")
        if len(set(self.alpn)) != len(self.alpn):
            raise ValueError("alpn must not repeat a protocol")
        return self


class Listener(_Model):
    """A socket every Envoy in the chosen fleets listens on."""

    name: Name
    address: Address = "0.0.0.0"
    port: int = Field(ge=1, le=65535)
    protocol: Literal["http", "tcp"] = "http"
    cluster: Name | None = Field(
        None, description="Target cluster of a tcp listener (required for tcp, not allowed for http)."
    )
    tls: ListenerTLS | None = None
    max_connections: int | None = Field(None, ge=1, le=100_000_000)
    bind_public_address: bool = Field(
        False,
        description="Each Envoy also listens at its own public_address (node metadata), same port: the address "
        "the front tier sends that Envoy's clients to, when Envoys share a host (and so this address).",
    )
    fleets: list[FleetName] = Field(
        default_factory=list, max_length=256, description="Envoy node clusters that get this listener; empty means all."
    )

    @field_validator("address")
    @classmethod
    def _ip_only(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"a listener address must be an IPv4/IPv6 literal, got {v!r}") from None

    @field_validator("fleets")
    @classmethod
    def _unique_fleets(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("fleets must not repeat a name")
        return sorted(v)

    @model_validator(mode="after")
    def _protocol_shape(self) -> Listener:
        if self.protocol == "tcp" and self.cluster is None:
            raise ValueError("a tcp listener needs 'cluster'")
        if self.protocol == "http" and self.cluster is not None:
            raise ValueError("an http listener takes no 'cluster'; attach routes to it instead")
        return self


# --- routes ---------------------------------------------------------------------------------

_HEADER_NAME = r"^:?[a-z0-9!#$%&'*+\-.^_`|~]+$"
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=128, to_lower=True, pattern=_HEADER_NAME)]


def _check_re2(pattern: str) -> str:
    """Envoy matches with RE2; reject what RE2 cannot compile (lookaround, backreferences)."""
    try:
        re2.compile(pattern)
    except Exception as exc:  # re2 raises its own error type
        raise ValueError(f"invalid RE2 regex {pattern!r}: {exc}") from None
    return pattern


Regex = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class HeaderMatch(_Model):
    name: HeaderName
    exact: str | None = Field(None, max_length=4096)
    prefix: str | None = Field(None, min_length=1, max_length=4096)
    regex: Regex | None = None
    present: bool | None = None
    invert: bool = False

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_re2(v)

    @model_validator(mode="after")
    def _one_kind(self) -> HeaderMatch:
        given = [k for k in ("exact", "prefix", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a header match needs exactly one of exact, prefix, regex, present")
        return self


class RouteMatch(_Model):
    prefix: str | None = Field(None, max_length=4096)
    path: str | None = Field(None, max_length=4096)
    regex: Regex | None = None
    headers: list[HeaderMatch] = Field(default_factory=list, max_length=32)

    @field_validator("prefix", "path")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @field_validator("regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else _check_re2(v)

    @model_validator(mode="after")
    def _one_kind(self) -> RouteMatch:
        given = [k for k in ("prefix", "path", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a match needs exactly one of prefix, path, regex")
        return self


class WeightedBackend(_Model):
    cluster: Name
    weight: int = Field(1, ge=1, le=1_000_000)


class HashPolicy(_Model):
    """What Envoy hashes to pick a host on a maglev/ring_hash cluster."""

    type: Literal["header", "cookie", "source_ip", "query_parameter"]
    name: str | None = Field(None, min_length=1, max_length=256, description="Header, cookie or query parameter name.")
    ttl: Duration | None = Field(None, description="Cookie only: if set, Envoy issues the cookie when absent.")
    path: str | None = Field(None, max_length=1024, description="Cookie only: the issued cookie's path.")
    terminal: bool = False

    @model_validator(mode="after")
    def _shape(self) -> HashPolicy:
        if self.type == "source_ip":
            if self.name is not None:
                raise ValueError("a source_ip hash policy takes no name")
        elif self.name is None:
            raise ValueError(f"a {self.type} hash policy needs a name")
        if self.type == "header" and self.name is not None:
            if not re.match(_HEADER_NAME, self.name.lower()):
                raise ValueError(f"{self.name!r} is not a valid header name")
            object.__setattr__(self, "name", self.name.lower())
        if self.type != "cookie" and (self.ttl is not None or self.path is not None):
            raise ValueError("ttl and path apply to cookie hash policies only")
        return self


class Route(_Model):
    """Requests on an http listener matching `match` (for `domains`) go to `backends`."""

    name: Name
    listener: Name
    domains: list[
        Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^(\*|\*?[A-Za-z0-9.\-]+(:\d+)?\*?)$")]
    ] = Field(default_factory=lambda: ["*"], min_length=1, max_length=64)
    match: RouteMatch = Field(default_factory=lambda: RouteMatch(prefix="/"))
    backends: list[WeightedBackend] = Field(min_length=1, max_length=64)
    hash_policies: list[HashPolicy] = Field(default_factory=list, max_length=16)
    timeout: Duration | None = Field(15.0, description="Whole-request timeout; null disables it (e.g. for streaming).")
    idle_timeout: Duration | None = None
    websocket: bool = False
    order: int = Field(0, ge=-1000, le=1000, description="Lower orders match first; ties by specificity, then name.")

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        lowered = [d.lower() for d in v]
        if len(set(lowered)) != len(lowered):
            raise ValueError("domains must not repeat")
        return lowered

    @model_validator(mode="after")
    def _backends_unique(self) -> Route:
        names = [b.cluster for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError("backends must name each cluster once")
        if self.hash_policies and len(self.backends) > 1:
            raise ValueError(
                "hash_policies with several weighted clusters is ambiguous: Envoy would pick the cluster at "
                "random and hash only within it; use a single cluster"
            )
        return self


# --- certificates ---------------------------------------------------------------------------


class SealedKey(_Model):
    """A private key as stored when a key-encryption key is configured (AES-256-GCM)."""

    alg: Literal["A256GCM"]
    kid: str = Field(max_length=64)
    nonce: str = Field(max_length=64)
    data: str = Field(max_length=65536)


class Certificate(_Model):
    """A PEM certificate chain (leaf first) and its private key. The key is write-only."""

    name: Name
    certificate_chain: str = Field(min_length=1, max_length=65536, description="PEM, leaf first, then each issuer.")
    private_key: str | SealedKey = Field(
        description="PEM, unencrypted. Never returned; sealed at rest when a KEK is set."
    )

    def __repr__(self) -> str:  # never let the key reach a log line
        return f"Certificate(name={self.name!r})"

    __str__ = __repr__


class Capacity(_Model):
    """What each Envoy of a fleet may hold, and when the front tier stops sending it clients."""

    max_connections_per_envoy: int = Field(
        ge=1, le=10_000_000, description="Connections each traffic listener of each Envoy accepts; more are refused."
    )
    high_water_percent: int = Field(90, ge=1, le=100, description="At or above this share the Envoy leaves the front.")
    low_water_percent: int = Field(75, ge=0, le=99, description="It comes back only below this share.")
    max_new_connections_per_second: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Per Envoy listener: new connections per second (a token bucket).",
    )
    new_connections_burst: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="The bucket's size: connections at once (default: one second's).",
    )

    @model_validator(mode="after")
    def _water(self) -> Capacity:
        if self.low_water_percent >= self.high_water_percent:
            raise ValueError("low_water_percent must be below high_water_percent (hysteresis)")
        return self


class Rebalance(_Model):
    """Moving persistent connections off Envoys above the fleet's mean, paced, until every
    Envoy is within the tolerance (controlplane/moves)."""

    enabled: bool = Field(False, description="Rebalance continuously; off: only on POST .../rebalance.")
    tolerance_percent: int = Field(
        10, ge=1, le=100, description="An Envoy more than this above the fleet mean gives up connections."
    )
    max_moves_per_second: int = Field(
        100, ge=1, le=1_000_000, description="Connections closed per second, fleet-wide (they reconnect elsewhere)."
    )
    min_connection_age: Duration = Field(
        30.0, description="A shard whose connections were moved is not moved again sooner than this."
    )


DEFAULT_MIN_IN_SERVICE = 1


class Fleet(_Model):
    """A fleet of Envoys (their node.cluster): its capacity, rebalancing and floor. A fleet
    with no object keeps the defaults (no limits lbcp sets, no rebalancing, a floor of 1)."""

    name: Name
    min_in_service: int = Field(
        DEFAULT_MIN_IN_SERVICE,
        ge=0,
        le=100_000,
        description=(
            "The fewest Envoys kept in the front door: a drain or evacuation that would leave fewer"
            " in service is refused (409 min-in-service) unless forced, and when every Envoy is at"
            " high water the least full are kept in front (front_state kept-full). 0 turns it off."
        ),
    )
    capacity: Capacity | None = None
    rebalance: Rebalance | None = None


# --- kinds ----------------------------------------------------------------------------------


class Kind(StrEnum):
    CLUSTER = "cluster"
    BACKEND = "backend"
    LISTENER = "listener"
    ROUTE = "route"
    CERTIFICATE = "certificate"
    FLEET = "fleet"


MODELS: dict[Kind, type[_Model]] = {
    Kind.CLUSTER: Cluster,
    Kind.BACKEND: Backend,
    Kind.LISTENER: Listener,
    Kind.ROUTE: Route,
    Kind.CERTIFICATE: Certificate,
    Kind.FLEET: Fleet,
}

Intent = Cluster | Backend | Listener | Route | Certificate | Fleet
