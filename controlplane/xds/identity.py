"""Who an xDS client is: its node id bound to its client certificate, and the bounds on what
it may tell a replica about itself.

With xDS mutual TLS the CA vouches for the certificate, and the certificate must vouch for
the node: an `IdentityRule` is a template such as `spiffe://lbcp/fleet/{fleet}/node/{node}`
(matched against the certificate's URI SANs) or `{node}` (matched against its DNS SANs).
A stream whose node id and fleet do not render to a name its certificate carries is
refused with PERMISSION_DENIED before it gets any configuration.

A template without `{node}` (e.g. one SPIFFE ID per Kubernetes service account) admits any
node id of the fleet to any holder of that identity; such an identity is *shared*, and a
shared identity never replaces another stream's claim on a node id (see `controlplane.xds.
registry`). docs/security.md explains the choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

# `lbcp xds --xds-identity NAME` presets; anything else is a template.
PRESETS = {
    "spiffe": "spiffe://lbcp/fleet/{fleet}/node/{node}",
    "dns": "{node}",
}

# Node ids and fleet names: what Kubernetes pod names, hostnames and lbcp's own names use.
NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}")
MAX_NODE_ID = 253


class IdentityError(Exception):
    """The client certificate does not vouch for the node id it claims (PERMISSION_DENIED)."""


@dataclass(frozen=True)
class Identity:
    """What a stream's certificate proved: the SAN that matched, and whether it names the node."""

    name: str
    node_bound: bool


@dataclass(frozen=True)
class IdentityRule:
    template: str

    @classmethod
    def parse(cls, value: str) -> IdentityRule:
        template = PRESETS.get(value, value)
        unknown = set(re.findall(r"{(\w*)}", template)) - {"node", "fleet"}
        if unknown or not template:
            raise ValueError(f"an identity template may use only {{node}} and {{fleet}}: {value!r}")
        return cls(template)

    @property
    def uri(self) -> bool:
        return "://" in self.template

    @property
    def node_bound(self) -> bool:
        return "{node}" in self.template

    def expected(self, node: str, fleet: str) -> str:
        return self.template.replace("{node}", node).replace("{fleet}", fleet)

    def check(self, cert_pem: bytes | None, node: str, fleet: str) -> Identity:
        """The identity `cert_pem` proves for (node, fleet), or IdentityError saying why not."""
        want = self.expected(node, fleet)
        if not cert_pem:
            raise IdentityError(f"node {node!r}: no client certificate; this replica requires one naming {want!r}")
        dns, uris = peer_sans(cert_pem)
        have = uris if self.uri else dns
        if want not in have:
            kind = "URI" if self.uri else "DNS"
            shown = ", ".join(have[:4]) or "none"
            raise IdentityError(
                f"node {node!r} in fleet {fleet!r}: the client certificate's {kind} SANs ({shown}) "
                f"do not include {want!r} (identity rule {self.template!r})"
            )
        return Identity(want, self.node_bound)


def peer_sans(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """(DNS SANs, URI SANs) of a PEM certificate (none when it has no SAN extension)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ext.get_values_for_type(x509.DNSName), ext.get_values_for_type(x509.UniformResourceIdentifier)
