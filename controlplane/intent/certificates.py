"""TLS certificates as intent: validation, public facts, and the private key's encryption at rest.

A certificate object is a PEM chain (leaf first) and its PEM private key. The key is
write-only: the API never returns it, and when a key-encryption key (KEK) is configured it
is stored in etcd only as AES-256-GCM ciphertext, bound to the certificate's name (the
associated data), so a ciphertext copied to another name does not decrypt.

KEKs come from the environment, the same in the API and every xDS replica:

- `LBCP_KEK`: the current key, 32 bytes base64 (`lbcp kek generate`). New writes use it.
- `LBCP_KEK_PREVIOUS`: comma-separated older keys, still accepted for reading. To rotate:
  deploy the new key as `LBCP_KEK` with the old one in `LBCP_KEK_PREVIOUS`, run
  `lbcp certificates reseal` (rewrites every certificate under the new key), then drop
  the old key.

Each ciphertext names its key by `kid` (the first 8 bytes of the key's SHA-256, hex), so a
reader picks the right key and says which one is missing when it cannot decrypt.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel

from controlplane.intent.errors import FieldError

_ENV_KEK = "LBCP_KEK"
_ENV_PREVIOUS = "LBCP_KEK_PREVIOUS"


# -- key encryption ----------------------------------------------------------------------------


class KeyUnavailable(Exception):
    """A stored private key cannot be read: no KEK configured, or not the one it was sealed with."""


def _kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class KeyRing:
    """The current KEK (or None: keys are stored in clear) and older ones, for reading."""

    current: bytes | None = None
    previous: tuple[bytes, ...] = ()

    @classmethod
    def from_env(cls) -> KeyRing:
        def decode(text: str, var: str) -> bytes:
            try:
                key = base64.b64decode(text.strip(), validate=True)
            except ValueError:
                raise ValueError(f"{var}: not base64") from None
            if len(key) != 32:
                raise ValueError(f"{var}: a KEK is 32 bytes (AES-256), got {len(key)}")
            return key

        current = os.environ.get(_ENV_KEK, "").strip()
        previous = [p for p in os.environ.get(_ENV_PREVIOUS, "").split(",") if p.strip()]
        return cls(decode(current, _ENV_KEK) if current else None, tuple(decode(p, _ENV_PREVIOUS) for p in previous))

    def seal(self, name: str, private_key: str) -> str | dict[str, str]:
        """What to store for `private_key`: the PEM itself, or its ciphertext under the current KEK."""
        if self.current is None:
            return private_key
        nonce = os.urandom(12)
        data = AESGCM(self.current).encrypt(nonce, private_key.encode(), name.encode())
        return {
            "alg": "A256GCM",
            "kid": _kid(self.current),
            "nonce": base64.b64encode(nonce).decode(),
            "data": base64.b64encode(data).decode(),
        }

    def open(self, name: str, stored: str | dict[str, Any] | BaseModel) -> str:
        """The PEM private key from what is stored (PEM, or a sealed key as dict or model)."""
        if isinstance(stored, str):
            return stored
        if isinstance(stored, BaseModel):
            stored = stored.model_dump()
        keys = {_kid(k): k for k in (self.current, *self.previous) if k is not None}
        key = keys.get(stored.get("kid", ""))
        if key is None:
            raise KeyUnavailable(
                f"certificate {name!r}: its key is sealed with KEK {stored.get('kid')!r}, "
                f"which is not configured ({_ENV_KEK} / {_ENV_PREVIOUS})"
            )
        try:
            return (
                AESGCM(key)
                .decrypt(base64.b64decode(stored["nonce"]), base64.b64decode(stored["data"]), name.encode())
                .decode()
            )
        except (InvalidTag, KeyError, ValueError):
            raise KeyUnavailable(
                f"certificate {name!r}: its sealed key does not decrypt (tampered, or stored under another name)"
            ) from None

    def sealed_with_current(self, stored: str | dict[str, Any] | BaseModel) -> bool:
        if isinstance(stored, BaseModel):
            stored = stored.model_dump()
        if self.current is None:
            return isinstance(stored, str)
        return isinstance(stored, dict) and stored.get("kid") == _kid(self.current)


_keyring: KeyRing | None = None


def keyring() -> KeyRing:
    """The process's KEKs, read from the environment once."""
    global _keyring
    if _keyring is None:
        _keyring = KeyRing.from_env()
    return _keyring


def set_keyring(ring: KeyRing | None) -> None:
    """Replace the process's KEKs (tests; None: read the environment again)."""
    global _keyring
    _keyring = ring


def generate_kek() -> str:
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


# -- parsing and validation ----------------------------------------------------------------------


@dataclass(frozen=True)
class CertInfo:
    """The public facts of a chain's leaf (what GET shows)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    dns_names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str
    serial: str
    chain_length: int

    def as_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        now = now or dt.datetime.now(dt.UTC)
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "sans": list(self.sans),
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "expires_in_seconds": int((self.not_after - now).total_seconds()),
            "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial,
            "chain_length": self.chain_length,
        }


def _load_chain(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def info(chain_pem: str) -> CertInfo:
    """Facts of the leaf of a chain already validated (raises ValueError if it does not parse)."""
    chain = _load_chain(chain_pem)
    leaf = chain[0]
    sans: list[str] = []
    dns_names: list[str] = []
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [str(n) for n in ext.get_values_for_type(x509.DNSName)]
        sans = [f"DNS:{n}" for n in dns_names] + [f"IP:{ip}" for ip in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        sans=tuple(sans),
        dns_names=tuple(dns_names),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(":"),
        serial=format(leaf.serial_number, "x"),
        chain_length=len(chain),
    )


def validate(chain_pem: str, key_pem: str, now: dt.datetime | None = None) -> list[FieldError]:
    """Why this chain and key cannot be served (empty: they can). Messages never quote the key."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = _load_chain(chain_pem)
    except ValueError as exc:
        return [FieldError("/certificate_chain", f"not a PEM certificate chain: {exc}")]
    errors: list[FieldError] = []
    leaf = chain[0]
    for i, cert in enumerate(chain):
        if cert.not_valid_after_utc <= now:
            errors.append(
                FieldError(
                    "/certificate_chain",
                    f"certificate {i} ({cert.subject.rfc4514_string()}) expired at "
                    f"{cert.not_valid_after_utc.isoformat()}",
                )
            )
        elif cert.not_valid_before_utc > now:
            errors.append(
                FieldError(
                    "/certificate_chain",
                    f"certificate {i} ({cert.subject.rfc4514_string()}) is not valid "
                    f"before {cert.not_valid_before_utc.isoformat()}",
                )
            )
    for i, (child, parent) in enumerate(zip(chain, chain[1:], strict=False)):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            errors.append(
                FieldError(
                    "/certificate_chain",
                    f"chain order: certificate {i} ({child.subject.rfc4514_string()}) "
                    f"is not issued by certificate {i + 1} ({parent.subject.rfc4514_string()}); "
                    "list the leaf first, then each issuer",
                )
            )
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        # The parser's own message can carry key material: say only what is wrong.
        errors.append(FieldError("/private_key", "not an unencrypted PEM private key"))
        return errors
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        errors.append(FieldError("/private_key", "does not match the leaf certificate (the first of the chain)"))
    return errors
