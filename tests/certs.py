"""Test certificates: the CA of `lbcp pki` (api/cli/pki.py), issuing leaf certificates."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from api.cli.pki import CA, Issued

__all__ = ["CA", "Issued", "with_test_certificates"]


def with_test_certificates(bootstrap: str) -> str:
    """A bootstrap's text with every `filename:` it names (certificate paths on the Envoy's
    host: a compose volume, a Kubernetes CSI mount) pointed at real files made here, so that
    `envoy --mode validate` can load them."""
    files = sorted(set(re.findall(r"filename: (\S+)", bootstrap)))
    if not files:
        return bootstrap
    tmp = Path(tempfile.mkdtemp(prefix="lbcp-certs-"))
    ca = CA()
    leaf = ca.issue("envoy", ["spiffe://lbcp/fleet/default/node/envoy"], client=True)
    for i, name in enumerate(files):
        data = ca.pem if name.endswith("ca.crt") else leaf.key_pem if name.endswith(".key") else leaf.cert_pem
        (tmp / f"{i}.pem").write_bytes(data)
        bootstrap = bootstrap.replace(f"filename: {name}", f"filename: {tmp / f'{i}.pem'}")
    return bootstrap
