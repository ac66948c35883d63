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
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

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


def _fail(title: str, field: str, message: str, value: Any) -> ValidationError:
    """An error at `field` of the model being validated, raised from a model validator (a
    plain ValueError there would point at the whole object)."""
    error = PydanticCustomError("value_error", "Value error, {msg}", {"msg": message})
    return ValidationError.from_exception_data(title, [InitErrorDetails(type=error, loc=(field,), input=value)])


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


class RetryBudget(_Model):
    """At most `percent` of the cluster's active requests may be retries (never fewer than
    `min_concurrency` at once): retries cannot multiply an outage's load (Envoy's retry budget)."""

    percent: float = Field(20.0, ge=0, le=100, description="Retries allowed, as a share of active requests.")
    min_concurrency: int = Field(3, ge=0, le=1_000_000, description="Concurrent retries always allowed.")


class CircuitBreakers(_Model):
    max_connections: int | None = Field(None, ge=1, le=100_000_000)
    max_pending_requests: int | None = Field(None, ge=1, le=100_000_000)
    max_requests: int | None = Field(None, ge=1, le=100_000_000)
    max_retries: int | None = Field(None, ge=0, le=100_000_000)
    retry_budget: RetryBudget | None = Field(
        None, description="Limit retries to a share of active requests (replaces max_retries' fixed count)."
    )

    @field_validator("retry_budget")
    @classmethod
    def _one_retry_limit(cls, v: RetryBudget | None, info: ValidationInfo) -> RetryBudget | None:
        if v is not None and info.data.get("max_retries") is not None:
            raise ValueError("give max_retries or retry_budget, not both: Envoy ignores max_retries under a budget")
        return v


class SlowStart(_Model):
    """A backend that just became available takes a share of traffic that grows over `window`
    (Envoy's slow start: weight x max(min_weight_percent, (t / window) ^ (1 / aggression)))."""

    window: Duration = Field(description="How long a new backend ramps up.", examples=["30s"])
    aggression: float = Field(1.0, gt=0, le=100, description="1: linear ramp; higher: faster start.")
    min_weight_percent: float = Field(10.0, ge=0, le=100, description="A new backend's weight starts at this share.")


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
    slow_start: SlowStart | None = Field(
        None, description="Ramp new backends up over a window (round_robin and least_request only)."
    )

    @field_validator("slow_start")
    @classmethod
    def _slow_start_lb(cls, v: SlowStart | None, info: ValidationInfo) -> SlowStart | None:
        lb = info.data.get("load_balancer")
        if v is not None and lb is not None and lb.type not in ("round_robin", "least_request"):
            raise ValueError(
                f"slow_start needs a round_robin or least_request load balancer; Envoy ignores it for {lb.type}"
            )
        return v

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


# Envoy 1.40's access-log command operators (its substitution formatter) and what each takes
# besides its name: parameters `(...)` (optional or required) and a length `:N`. Envoy
# rejects a listener whose log names any other operator, or misuses one of these (read off
# the envoy binary lbcp ships, `--mode validate`, one operator at a time).
_LOG_OPERATORS_PLAIN = frozenset(
    (
        "ACCESS_LOG_TYPE BYTES_RECEIVED BYTES_RETRANSMITTED BYTES_SENT CONNECTION_ID "
        "CONNECTION_TERMINATION_DETAILS CUSTOM_FLAGS DOWNSTREAM_CX_RTT "
        "DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED DOWNSTREAM_DECOMPRESSED_HEADER_BYTES_SENT "
        "DOWNSTREAM_DETECTED_CLOSE_TYPE DOWNSTREAM_DIRECT_LOCAL_ADDRESS "
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_ENDPOINT_ID DOWNSTREAM_DIRECT_LOCAL_PORT "
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS DOWNSTREAM_DIRECT_REMOTE_PORT DOWNSTREAM_HANDSHAKE_DURATION "
        "DOWNSTREAM_HEADER_BYTES_RECEIVED DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_LOCAL_ADDRESS "
        "DOWNSTREAM_LOCAL_ADDRESS_ENDPOINT_ID DOWNSTREAM_LOCAL_CLOSE_REASON DOWNSTREAM_LOCAL_DNS_SAN "
        "DOWNSTREAM_LOCAL_EMAIL_SAN DOWNSTREAM_LOCAL_IP_SAN DOWNSTREAM_LOCAL_OTHERNAME_SAN "
        "DOWNSTREAM_LOCAL_PORT DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_PEER_CERT "
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1 DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256 "
        "DOWNSTREAM_PEER_CHAIN_SERIALS DOWNSTREAM_PEER_DNS_SAN DOWNSTREAM_PEER_EMAIL_SAN "
        "DOWNSTREAM_PEER_FINGERPRINT_1 DOWNSTREAM_PEER_FINGERPRINT_256 DOWNSTREAM_PEER_IP_SAN "
        "DOWNSTREAM_PEER_ISSUER DOWNSTREAM_PEER_ISSUER_FINGERPRINT_256 DOWNSTREAM_PEER_ISSUER_SERIAL "
        "DOWNSTREAM_PEER_OTHERNAME_SAN DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_SUBJECT DOWNSTREAM_PEER_URI_SAN "
        "DOWNSTREAM_REMOTE_ADDRESS DOWNSTREAM_REMOTE_PORT DOWNSTREAM_TLS_CIPHER DOWNSTREAM_TLS_GROUP "
        "DOWNSTREAM_TLS_SESSION_ID DOWNSTREAM_TLS_VERSION DOWNSTREAM_TRANSPORT_FAILURE_REASON "
        "DOWNSTREAM_WIRE_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_SENT DURATION FILTER_CHAIN_NAME "
        "GRPC_STATUS_NUMBER HOSTNAME LISTENER_NAME LOCAL_REPLY_BODY PACKETS_RETRANSMITTED PROTOCOL "
        "REQUEST_DURATION REQUEST_HEADERS_BYTES REQUEST_TX_DURATION RESPONSE_CODE RESPONSE_DURATION "
        "RESPONSE_FLAGS RESPONSE_FLAGS_LONG RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES "
        "RESPONSE_TX_DURATION ROUNDTRIP_DURATION ROUTE_NAME ROUTE_RESOLUTION_COUNT ROUTE_RESOLUTION_TIME_US "
        "SPAN_ID STREAM_ID TLS_JA3_FINGERPRINT TLS_JA4_FINGERPRINT TRACE_ID UNIQUE_ID UPSTREAM_CLUSTER "
        "UPSTREAM_CLUSTER_RAW UPSTREAM_CONNECTION_ID UPSTREAM_CONNECTION_IDS_ATTEMPTED "
        "UPSTREAM_CONNECTION_POOL_READY_DURATION UPSTREAM_DECOMPRESSED_HEADER_BYTES_RECEIVED "
        "UPSTREAM_DECOMPRESSED_HEADER_BYTES_SENT UPSTREAM_DETECTED_CLOSE_TYPE UPSTREAM_HEADER_BYTES_RECEIVED "
        "UPSTREAM_HEADER_BYTES_SENT UPSTREAM_HOST UPSTREAM_HOSTS_ATTEMPTED "
        "UPSTREAM_HOSTS_ATTEMPTED_WITHOUT_PORT UPSTREAM_HOST_NAME UPSTREAM_HOST_NAMES_ATTEMPTED "
        "UPSTREAM_HOST_NAMES_ATTEMPTED_WITHOUT_PORT UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_LOCAL_ADDRESS "
        "UPSTREAM_LOCAL_CLOSE_REASON UPSTREAM_LOCAL_DNS_SAN UPSTREAM_LOCAL_IP_SAN UPSTREAM_LOCAL_PORT "
        "UPSTREAM_LOCAL_URI_SAN UPSTREAM_PEER_CERT UPSTREAM_PEER_DNS_SAN UPSTREAM_PEER_IP_SAN "
        "UPSTREAM_PEER_ISSUER UPSTREAM_PEER_SUBJECT UPSTREAM_PEER_URI_SAN UPSTREAM_PROTOCOL "
        "UPSTREAM_REMOTE_ADDRESS UPSTREAM_REMOTE_ADDRESS_ENDPOINT_ID UPSTREAM_REMOTE_PORT "
        "UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_SERVER_NAME UPSTREAM_TLS_CIPHER UPSTREAM_TLS_GROUP "
        "UPSTREAM_TLS_SESSION_ID UPSTREAM_TLS_VERSION UPSTREAM_TRANSPORT_FAILURE_REASON "
        "UPSTREAM_WIRE_BYTES_RECEIVED UPSTREAM_WIRE_BYTES_SENT VIRTUAL_CLUSTER_NAME "
    ).split()
)
# name: (parameters required, length allowed)
_LOG_OPERATORS_WITH_PARAMETERS: dict[str, tuple[bool, bool]] = {
    "CEL": (True, True),
    "CLUSTER_METADATA": (True, False),
    "COALESCE": (True, False),
    "COMMON_DURATION": (True, False),
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT": (False, False),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": (False, False),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (False, False),
    "DOWNSTREAM_PEER_CERT_V_END": (False, False),
    "DOWNSTREAM_PEER_CERT_V_START": (False, False),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (False, False),
    "DYNAMIC_METADATA": (True, True),
    "EMIT_TIME": (False, False),
    "EMIT_TIME_LOCAL": (False, False),
    "ENVIRONMENT": (True, True),
    "FILTER_STATE": (True, True),
    "GRPC_STATUS": (False, False),
    "METADATA": (True, True),
    "PATH": (False, True),
    "QUERY_PARAM": (True, True),
    "QUERY_PARAMS": (False, True),
    "REQ": (True, True),
    "REQUESTED_SERVER_NAME": (False, False),
    "REQUEST_HEADER": (True, True),
    "RESP": (True, True),
    "RESPONSE_CODE_DETAILS": (False, False),
    "RESPONSE_HEADER": (True, True),
    "RESPONSE_TRAILER": (True, True),
    "START_TIME": (False, False),
    "START_TIME_LOCAL": (False, False),
    "STREAM_INFO_REQ": (True, True),
    "TRAILER": (True, True),
    "UPSTREAM_FILTER_STATE": (True, True),
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (False, False),
    "UPSTREAM_METADATA": (True, False),
    "UPSTREAM_PEER_CERT_V_END": (False, False),
    "UPSTREAM_PEER_CERT_V_START": (False, False),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (False, False),
}

# Envoy's own grammar of an operator (its SubstitutionFormatParser).
_COMMAND_OPERATOR = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")


def _operator_problem(name: str, parameters: str | None, length: str | None) -> str | None:
    if name in _LOG_OPERATORS_PLAIN:
        return None if parameters is None and length is None else "takes no parameters or length"
    shape = _LOG_OPERATORS_WITH_PARAMETERS.get(name)
    if shape is None:
        return "is not an Envoy command operator (e.g. %RESPONSE_CODE%, %REQ(:PATH)%, %START_TIME%)"
    required, length_allowed = shape
    if required and not parameters:
        return f"needs parameters: %{name}(...)%"
    if length is not None and not length_allowed:
        return "takes no length"
    return None


def _check_log_value(v: str) -> str:
    """An access-log field: text with Envoy command operators (`%REQ(:PATH)%`), read as Envoy
    reads it: '%%' is a literal '%', and every other '%' starts an operator Envoy knows."""
    pos = v.find("%")
    while pos != -1:
        if v.startswith("%%", pos):
            pos = v.find("%", pos + 2)
            continue
        m = _COMMAND_OPERATOR.match(v, pos)
        if m is None:
            raise ValueError(
                f"{v!r}: '%' starts an Envoy command operator such as %REQ(:PATH)%; write a literal '%' as '%%'"
            )
        problem = _operator_problem(m.group(1), m.group(2), m.group(3))
        if problem is not None:
            raise ValueError(f"{m.group(0)!r} {problem}")
        pos = v.find("%", m.end())
    return v


LogField = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_check_log_value)]


class AccessLog(_Model):
    """One line per request (http) or connection (tcp), written by each Envoy."""

    format: Literal["text", "json"] = Field("text", description="text: Envoy's default line; json: `fields`.")
    fields: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], LogField] = Field(
        default_factory=dict,
        validate_default=True,  # a json log that omits fields must be refused too
        max_length=64,
        description='json only: field name -> Envoy command operator, e.g. {"path": "%REQ(:PATH)%"}.',
        examples=[{"status": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "duration_ms": "%DURATION%"}],
    )
    path: str = Field(
        "/dev/stdout",
        max_length=4096,
        pattern=r"^/[^\x00]*$",
        description="Where each Envoy writes the log (an absolute path on the Envoy host).",
    )

    @field_validator("path")
    @classmethod
    def _no_dotdot(cls, v: str) -> str:
        if "/../" in v + "/" or v.endswith("/"):
            raise ValueError("an access log path is an absolute file path without '..'")
        return v

    @field_validator("fields")
    @classmethod
    def _fields_for_json(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        fmt = info.data.get("format")
        if fmt == "json" and not v:
            raise ValueError("a json access log needs fields (name -> Envoy command operator)")
        if fmt == "text" and v:
            raise ValueError("fields apply to json access logs only")
        return v


class Collector(_Model):
    address: Address = Field(description="IP literal of an OTLP/gRPC collector.")
    port: int = Field(4317, ge=1, le=65535)

    @field_validator("address")
    @classmethod
    def _ip_only(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_address(v))
        except ValueError:
            raise ValueError(f"a collector address must be an IPv4/IPv6 literal, got {v!r}") from None


class Tracing(_Model):
    """OpenTelemetry spans for requests through this listener, sent over OTLP/gRPC."""

    collector: Collector | None = Field(None, description="The collector's address (or give `cluster`).")
    cluster: Name | None = Field(None, description="An http2 cluster of OTLP/gRPC collectors (or give `collector`).")
    sampling_percent: float = Field(1.0, ge=0, le=100, description="Share of requests traced.")
    service_name: str = Field(
        "envoy", min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$", description="OpenTelemetry service.name."
    )

    @model_validator(mode="after")
    def _one_destination(self) -> Tracing:
        if (self.cluster is None) == (self.collector is None):
            raise ValueError("tracing needs exactly one of collector or cluster")
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
    access_log: AccessLog | None = Field(None, description="Log each request (http) or connection (tcp).")
    tracing: Tracing | None = Field(None, description="OpenTelemetry tracing (http listeners only).")

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

    @field_validator("tracing")
    @classmethod
    def _tracing_http(cls, v: Tracing | None, info: ValidationInfo) -> Tracing | None:
        if v is not None and info.data.get("protocol") == "tcp":
            raise ValueError("tracing applies to http listeners only")
        return v

    @model_validator(mode="after")
    def _protocol_shape(self) -> Listener:
        if self.protocol == "tcp" and self.cluster is None:
            raise ValueError("a tcp listener needs 'cluster'")
        if self.protocol == "http" and self.cluster is not None:
            raise ValueError("an http listener takes no 'cluster'; attach routes to it instead")
        return self

    @property
    def clusters(self) -> tuple[str, ...]:
        """The clusters this listener names (a tcp listener's target, a tracing cluster)."""
        out = [] if self.cluster is None else [self.cluster]
        if self.tracing is not None and self.tracing.cluster is not None and self.tracing.cluster not in out:
            out.append(self.tracing.cluster)
        return tuple(out)


# --- routes ---------------------------------------------------------------------------------

# Case-insensitive (pydantic checks the pattern before lowering, so it admits A-Z too).
_HEADER_NAME = r"^:?[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
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

    type: Literal["header", "cookie", "source_ip", "query_parameter", "path"]
    name: str | None = Field(None, min_length=1, max_length=256, description="Header, cookie or query parameter name.")
    ttl: Duration | None = Field(None, description="Cookie only: if set, Envoy issues the cookie when absent.")
    path: str | None = Field(None, max_length=1024, description="Cookie only: the issued cookie's path.")
    query: bool | None = Field(
        None, description="path only: hash the query string too (default true, like NGINX's $request_uri)."
    )
    terminal: bool = False

    @model_validator(mode="after")
    def _shape(self) -> HashPolicy:
        if self.query is not None and self.type != "path":
            raise ValueError("query applies to path hash policies only")
        if self.type in ("source_ip", "path"):
            if self.name is not None:
                raise ValueError(f"a {self.type} hash policy takes no name")
        elif self.name is None:
            raise ValueError(f"a {self.type} hash policy needs a name")
        if self.type == "header" and self.name is not None:
            if not re.match(_HEADER_NAME, self.name.lower()):
                raise ValueError(f"{self.name!r} is not a valid header name")
            object.__setattr__(self, "name", self.name.lower())
        if self.type != "cookie" and (self.ttl is not None or self.path is not None):
            raise ValueError("ttl and path apply to cookie hash policies only")
        return self


# --- route traffic policy -------------------------------------------------------------------

# Headers Envoy will not let a route change (its HeaderParser: pseudo-headers and host).
_UNCHANGEABLE_HEADERS = ("host",)
HeaderValue = Annotated[
    str,
    StringConstraints(max_length=8192, pattern=r"^[^\r\n\x00]*$"),
    Field(description="A literal value ('%' is sent as is)."),
]


def _changeable(name: str) -> str:
    if name.startswith(":") or name in _UNCHANGEABLE_HEADERS:
        raise ValueError(f"{name!r} cannot be changed by a route (Envoy refuses pseudo-headers and host)")
    return name


ChangeableHeader = Annotated[HeaderName, AfterValidator(_changeable)]


class HeaderChanges(_Model):
    """Headers to set (replacing any), add (beside any) and remove, in that order of precedence."""

    set: dict[ChangeableHeader, HeaderValue] = Field(default_factory=dict, max_length=32)
    add: dict[ChangeableHeader, HeaderValue] = Field(default_factory=dict, max_length=32)
    remove: list[ChangeableHeader] = Field(default_factory=list, max_length=32)

    @field_validator("set", "add", "remove", mode="before")
    @classmethod
    def _once_each(cls, v: Any) -> Any:
        names = [n.lower() for n in v if isinstance(n, str)] if isinstance(v, dict | list) else []
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{repeated} repeated (header names ignore case)")
        return v

    @field_validator("remove")
    @classmethod
    def _disjoint(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("remove must not repeat a header")
        both = sorted(set(v) & (set(info.data.get("set", {})) | set(info.data.get("add", {}))))
        if both:
            raise ValueError(f"{both} are both removed and set or added")
        return v

    @field_validator("add")
    @classmethod
    def _not_set(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        both = sorted(set(v) & set(info.data.get("set", {})))
        if both:
            raise ValueError(f"{both} are both set and added: set replaces, add appends; choose one")
        return v


RetryOn = Literal[
    "5xx", "gateway-error", "reset", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes"
]


DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "refused-stream", "gateway-error")


class Backoff(_Model):
    base: Duration = Field(0.025, description="First back-off interval (Envoy's default 25ms); doubles per retry.")
    max: Duration | None = Field(None, description="Longest back-off (default 10 x base).")

    @field_validator("max")
    @classmethod
    def _max_at_least_base(cls, v: float | None, info: ValidationInfo) -> float | None:
        base = info.data.get("base")
        if v is not None and base is not None and v < base:
            raise ValueError("max must be at least base")
        return v


class Retries(_Model):
    """Envoy retries a failed request up to `attempts` more times (HTTP retry policy)."""

    attempts: int = Field(ge=1, le=10, description="Retries after the first try (Envoy's num_retries).")
    on: list[RetryOn] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        min_length=1,
        max_length=7,
        description="Which failures are retried.",
    )
    status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(
        default_factory=list, max_length=32, description="With retriable-status-codes: the statuses retried."
    )
    per_try_timeout: Duration | None = Field(None, description="Timeout of each try (the route's timeout bounds all).")
    backoff: Backoff | None = None

    @field_validator("on")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("on must not repeat a condition")
        return v

    @field_validator("status_codes")
    @classmethod
    def _codes_need_condition(cls, v: list[int], info: ValidationInfo) -> list[int]:
        on = info.data.get("on")
        if on is not None and bool(v) != ("retriable-status-codes" in on):
            raise ValueError("status_codes go with (and only with) the retriable-status-codes condition")
        return sorted(set(v))

    @model_validator(mode="after")
    def _condition_needs_codes(self) -> Retries:
        if "retriable-status-codes" in self.on and not self.status_codes:
            raise _fail("Retries", "status_codes", "retriable-status-codes needs status_codes", [])
        return self


_HOST = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"


class Redirect(_Model):
    """Answer with a redirect instead of forwarding; unset parts keep the request's."""

    scheme: Literal["http", "https"] | None = None
    host: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_HOST)] | None = None
    port: int | None = Field(None, ge=1, le=65535)
    path: str | None = Field(None, max_length=4096, pattern=r"^/", description="Replace the whole path.")
    prefix: str | None = Field(
        None, max_length=4096, pattern=r"^/", description="Replace the matched prefix (prefix and path matches)."
    )
    status: Literal[301, 302, 303, 307, 308] = 301
    strip_query: bool = False

    @field_validator("prefix")
    @classmethod
    def _path_or_prefix(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and info.data.get("path") is not None:
            raise ValueError("give path or prefix, not both")
        return v

    @model_validator(mode="after")
    def _goes_somewhere(self) -> Redirect:
        parts = (self.scheme, self.host, self.port, self.path, self.prefix)
        if all(p is None for p in parts) and not self.strip_query:
            raise ValueError("a redirect to the same URL loops: give scheme, host, port, path, prefix or strip_query")
        return self


DIRECT_RESPONSE_MAX_BODY = 65536


class DirectResponse(_Model):
    """Answer from the Envoy itself, without a backend."""

    status: int = Field(ge=200, le=599)
    body: str = Field("", description=f"At most {DIRECT_RESPONSE_MAX_BODY} bytes of UTF-8.")
    content_type: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\r\n\x00]+$")] = (
        "text/plain"
    )

    @field_validator("body")
    @classmethod
    def _body_size(cls, v: str) -> str:
        if len(v.encode()) > DIRECT_RESPONSE_MAX_BODY:
            raise ValueError(f"a direct response body is at most {DIRECT_RESPONSE_MAX_BODY} bytes")
        return v


class RegexRewrite(_Model):
    pattern: Regex
    substitution: str = Field(max_length=4096, description="RE2 substitution (\\1 for the first group).")

    @field_validator("pattern")
    @classmethod
    def _re2(cls, v: str) -> str:
        return _check_re2(v)


class Rewrite(_Model):
    """Change the request before it is forwarded: its path (by prefix or regex) and host."""

    prefix: str | None = Field(None, max_length=4096, description="Replaces the matched prefix.")
    regex: RegexRewrite | None = None
    host: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_HOST)] | None = None

    @field_validator("regex")
    @classmethod
    def _one_path_rewrite(cls, v: RegexRewrite | None, info: ValidationInfo) -> RegexRewrite | None:
        if v is not None and info.data.get("prefix") is not None:
            raise ValueError("give prefix or regex, not both")
        return v

    @model_validator(mode="after")
    def _something(self) -> Rewrite:
        if self.prefix is None and self.regex is None and self.host is None:
            raise ValueError("a rewrite needs prefix, regex or host")
        return self


class Mirror(_Model):
    """Send a copy of requests to `cluster`; its answers are dropped."""

    cluster: Name
    percent: float = Field(100.0, ge=0, le=100, description="Share of requests copied.")


class FaultDelay(_Model):
    duration: Duration
    percent: float = Field(100.0, ge=0, le=100)


class FaultAbort(_Model):
    status: int = Field(ge=200, le=599)
    percent: float = Field(100.0, ge=0, le=100)


class Fault(_Model):
    """Inject latency and errors into a share of requests (chaos testing)."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _something(self) -> Fault:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs delay or abort")
        return self


class OriginRegex(_Model):
    regex: Regex

    @field_validator("regex")
    @classmethod
    def _re2(cls, v: str) -> str:
        return _check_re2(v)


_TOKEN = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
Token = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_TOKEN)]


class Cors(_Model):
    """Cross-origin resource sharing, answered by Envoy (preflights never reach a backend)."""

    allow_origins: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)] | OriginRegex] = Field(
        min_length=1,
        max_length=64,
        description='Exact origins ("https://app.example.com"), "*" for any, or {"regex": ...}.',
        examples=[["https://app.example.com", {"regex": "https://.*\\.example\\.com"}]],
    )
    allow_methods: list[Token] = Field(default_factory=list, max_length=32)
    allow_headers: list[Token] = Field(default_factory=list, max_length=64)
    expose_headers: list[Token] = Field(default_factory=list, max_length=64)
    max_age: Duration | None = Field(None, description="How long browsers may cache a preflight's answer.")
    allow_credentials: bool = False

    @model_validator(mode="after")
    def _credentials_need_origins(self) -> Cors:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError('allow_credentials with the origin "*" lets any site act as the user; name the origins')
        return self


class RateLimitKey(_Model):
    """One bucket per value of a request header, or per client address."""

    header: HeaderName | None = None
    source_ip: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> RateLimitKey:
        if (self.header is None) == (not self.source_ip):
            raise ValueError("a rate-limit key is a header or source_ip: true")
        return self


RATE_LIMIT_PERIODS = {"1s": 1, "1m": 60, "1h": 3600}


class RateLimit(_Model):
    """At most `requests` per `per` (plus `burst` at once); over it Envoy answers 429 with
    retry-after. scope envoy: each Envoy enforces the whole limit on its own; fleet: lbcp
    divides the limit over the Envoys in service by their share of live connections."""

    requests: int = Field(ge=1, le=1_000_000_000, description="Requests allowed per period.")
    per: Literal["1s", "1m", "1h"] = "1s"
    burst: int = Field(0, ge=0, le=1_000_000_000, description="Requests allowed above the rate at once.")
    key: RateLimitKey | None = Field(None, description="One bucket per value (header or client address).")
    scope: Literal["envoy", "fleet"] = "envoy"

    @property
    def seconds(self) -> int:
        return RATE_LIMIT_PERIODS[self.per]


class Route(_Model):
    """Requests on an http listener matching `match` (for `domains`) go to `backends`, or are
    answered by Envoy itself (`redirect`, `direct_response`)."""

    name: Name
    listener: Name
    domains: list[
        Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^(\*|\*?[A-Za-z0-9.\-]+(:\d+)?\*?)$")]
    ] = Field(default_factory=lambda: ["*"], min_length=1, max_length=64)
    match: RouteMatch = Field(default_factory=lambda: RouteMatch(prefix="/"))
    backends: list[WeightedBackend] = Field(
        default_factory=list, max_length=64, description="Where requests go (unless redirect or direct_response)."
    )
    hash_policies: list[HashPolicy] = Field(default_factory=list, max_length=16)
    timeout: Duration | None = Field(15.0, description="Whole-request timeout; null disables it (e.g. for streaming).")
    idle_timeout: Duration | None = None
    websocket: bool = False
    order: int = Field(0, ge=-1000, le=1000, description="Lower orders match first; ties by specificity, then name.")
    redirect: Redirect | None = Field(None, description="Answer with a redirect (instead of backends).")
    direct_response: DirectResponse | None = Field(None, description="Answer from Envoy (instead of backends).")
    retries: Retries | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderChanges | None = Field(None, description="Changes to the request before it is forwarded.")
    response_headers: HeaderChanges | None = Field(None, description="Changes to the response before it is sent.")
    mirror: list[Mirror] = Field(default_factory=list, max_length=8, description="Shadow copies of requests.")
    fault: Fault | None = None
    cors: Cors | None = None
    rate_limit: RateLimit | None = None

    @field_validator("direct_response")
    @classmethod
    def _one_answer(cls, v: DirectResponse | None, info: ValidationInfo) -> DirectResponse | None:
        if v is not None and info.data.get("redirect") is not None:
            raise ValueError("give redirect or direct_response, not both")
        if v is not None and info.data.get("backends"):
            raise ValueError("a route with direct_response takes no backends")
        return v

    @field_validator("redirect")
    @classmethod
    def _redirect_alone(cls, v: Redirect | None, info: ValidationInfo) -> Redirect | None:
        if v is not None and info.data.get("backends"):
            raise ValueError("a route with redirect takes no backends")
        if v is not None and v.prefix is not None and (m := info.data.get("match")) is not None and m.regex is not None:
            raise ValueError("a prefix redirect needs a prefix or path match, not regex")
        return v

    @field_validator("retries", "rewrite", "mirror", "cors")
    @classmethod
    def _forwarding_only(cls, v: Any, info: ValidationInfo) -> Any:
        # (cors too: Envoy's CORS filter acts only on routes with a route action)
        if v and not info.data.get("backends") and "backends" in info.data:
            raise ValueError(f"{info.field_name} applies to routes that forward to backends")
        return v

    @field_validator("rewrite")
    @classmethod
    def _prefix_rewrite_match(cls, v: Rewrite | None, info: ValidationInfo) -> Rewrite | None:
        m = info.data.get("match")
        if v is not None and v.prefix is not None and m is not None and m.regex is not None:
            raise ValueError("a prefix rewrite needs a prefix or path match; use a regex rewrite with a regex match")
        return v

    @field_validator("mirror")
    @classmethod
    def _mirror_unique(cls, v: list[Mirror]) -> list[Mirror]:
        names = [m.cluster for m in v]
        if len(set(names)) != len(names):
            raise ValueError("mirror must name each cluster once")
        return v

    @property
    def clusters(self) -> tuple[str, ...]:
        """Every cluster this route names: its backends, then its mirrors."""
        out = [b.cluster for b in self.backends]
        out += [m.cluster for m in self.mirror if m.cluster not in out]
        return tuple(out)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        lowered = [d.lower() for d in v]
        if len(set(lowered)) != len(lowered):
            raise ValueError("domains must not repeat")
        return lowered

    @model_validator(mode="after")
    def _backends_unique(self) -> Route:
        if not self.backends and self.redirect is None and self.direct_response is None:
            raise _fail("Route", "backends", "a route needs at least 1 backend, or a redirect or direct_response", [])
        if not self.backends and self.hash_policies:
            raise _fail("Route", "hash_policies", "hash_policies apply to routes that forward to backends", [])
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
