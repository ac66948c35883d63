"""Secrets (SDS): certificates served by name."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from controlplane.intent.model import (
    Certificate,
)


def secret_resource(cert: Certificate, private_key_pem: str) -> secret_pb2.Secret:
    """The certificate as an SDS Secret (the key opened from its sealed form by the caller)."""
    return secret_pb2.Secret(
        name=cert.name,
        tls_certificate=tls_common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.certificate_chain.encode()),
            private_key=base_pb2.DataSource(inline_bytes=private_key_pem.encode()),
        ),
    )
