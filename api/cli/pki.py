"""`lbcp pki`: a small CA for xDS mutual TLS, issuing certificates that match the replica's
identity rule (controlplane.xds.identity), so a node id is bound to its certificate.

- `lbcp pki ca --dir D`: a new CA (D/ca.crt, D/ca.key, mode 0600).
- `lbcp pki server --dir D --name xds --san xds-0 --san 10.0.0.5`: a replica's serving certificate.
- `lbcp pki envoy --dir D --node envoy-0 --fleet default`: an Envoy's client certificate, with
  the URI SAN `spiffe://lbcp/fleet/default/node/envoy-0` (or `--identity dns|TEMPLATE`).
- `lbcp pki bundle --dir D --server xds-0 --envoy envoy-0 ...`: all of the above at once, each
  file only if missing (what docker-compose.yml's `pki` service runs).

For production, any CA works (cert-manager, Vault, an internal PKI): what matters is the
SAN the replica's `--xds-identity` rule expects; docs/security.md says how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.xds.identity import IdentityRule


@dataclass
class Issued:
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[str, str]:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        _write_private(key, self.key_pem)
        return str(cert), str(key)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CA:
    """A CA key and self-signed certificate (EC P-256), new or loaded from files."""

    def __init__(self, name: str = "lbcp CA", *, days: int = 30) -> None:
        self.key: ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @classmethod
    def load(cls, directory: Path) -> CA:
        ca = cls.__new__(cls)
        ca.cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SystemExit(f"{directory / 'ca.key'}: not an EC private key")
        ca.key = key
        return ca

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.crt").write_bytes(self.pem)
        _write_private(directory / "ca.key", _key_pem(self.key))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        sans: tuple[str, ...] | list[str] = (),
        *,
        client: bool = False,
        days: int = 30,
        not_before: dt.datetime | None = None,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = []
        for s in sans:
            if "://" in s:
                alt.append(x509.UniformResourceIdentifier(s))
                continue
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                alt.append(x509.DNSName(s))
        usage = (
            [ExtendedKeyUsageOID.CLIENT_AUTH]
            if client
            else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after((not_before or now) + dt.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        )
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def envoy_identity(node: str, fleet: str, rule: str = "spiffe") -> str:
    """The SAN an Envoy's certificate must carry for the replica's `--xds-identity` rule."""
    return IdentityRule.parse(rule).expected(node, fleet)


# -- commands ------------------------------------------------------------------------------


def cmd_ca(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if (directory / "ca.key").exists() and not args.force:
        raise SystemExit(f"{directory / 'ca.key'} exists (--force replaces it)")
    CA(args.name, days=args.days).save(directory)
    print(f"CA written to {directory}/ca.crt and ca.key")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    sans = args.san or [args.name]
    cert, _ = CA.load(directory).issue(args.name, sans, days=args.days).write(directory, args.name)
    print(f"server certificate {cert} for {', '.join(sans)}")
    return 0


def cmd_envoy(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    try:
        san = envoy_identity(args.node, args.fleet, args.identity)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    issued = CA.load(directory).issue(args.node, [san], client=True, days=args.days)
    cert, _ = issued.write(directory, args.node)
    print(f"client certificate {cert} naming {san}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if not (directory / "ca.key").exists():
        CA(args.name, days=args.days).save(directory)
        print(f"CA written to {directory}/ca.crt")
    ca = CA.load(directory)
    mode = int(args.key_mode, 8)
    for item in args.server or []:
        name, _, sans = item.partition("=")
        if not (directory / f"{name}.crt").exists():
            issued = ca.issue(name, sans.split(",") if sans else [name], days=args.days)
            issued.write(directory, name)
            print(f"server certificate {directory}/{name}.crt")
    for node in args.envoy or []:
        if not (directory / f"{node}.crt").exists():
            issued = ca.issue(node, [envoy_identity(node, args.fleet, args.identity)], client=True, days=args.days)
            issued.write(directory, node)
            print(f"client certificate {directory}/{node}.crt")
    for key in directory.glob("*.key"):
        if key.name != "ca.key":
            os.chmod(key, mode)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("pki", help="a small CA for xDS mutual TLS: certificates bound to node ids")
    ps = p.add_subparsers(dest="action", required=True)
    x = ps.add_parser("ca", help="create a CA (DIR/ca.crt, DIR/ca.key)")
    x.add_argument("--dir", required=True)
    x.add_argument("--name", default="lbcp xDS CA")
    x.add_argument("--days", type=int, default=3650)
    x.add_argument("--force", action="store_true")
    x.set_defaults(func=cmd_ca)
    x = ps.add_parser("server", help="a replica's serving certificate (DIR/NAME.crt, .key)")
    x.add_argument("--dir", required=True)
    x.add_argument("--name", required=True)
    x.add_argument("--san", action="append", help="DNS name or IP the Envoys dial (repeatable; default NAME)")
    x.add_argument("--days", type=int, default=365)
    x.set_defaults(func=cmd_server)
    x = ps.add_parser("envoy", help="an Envoy's client certificate naming its node (DIR/NODE.crt, .key)")
    x.add_argument("--dir", required=True)
    x.add_argument("--node", required=True)
    x.add_argument("--fleet", default="default")
    x.add_argument("--identity", default="spiffe", help="the replicas' --xds-identity rule (spiffe, dns, template)")
    x.add_argument("--days", type=int, default=365)
    x.set_defaults(func=cmd_envoy)
    x = ps.add_parser("bundle", help="CA, replica and Envoy certificates at once, each only if missing")
    x.add_argument("--dir", required=True)
    x.add_argument("--name", default="lbcp xDS CA")
    x.add_argument("--server", action="append", metavar="NAME[=SAN,SAN]", help="a replica certificate (repeatable)")
    x.add_argument("--envoy", action="append", metavar="NODE", help="an Envoy client certificate (repeatable)")
    x.add_argument("--fleet", default="default")
    x.add_argument("--identity", default="spiffe")
    x.add_argument("--days", type=int, default=365)
    x.add_argument("--key-mode", default="600", help="octal mode of the issued keys (the CA key stays 600)")
    x.set_defaults(func=cmd_bundle)
