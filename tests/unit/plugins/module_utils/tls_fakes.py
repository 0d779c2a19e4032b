# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Real certificates for the unit tests of the TLS checks: a CA and host certificates made with
python cryptography, written the way the kvm_host role installs them (/etc/pki/qemu layout)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import typing as t

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.kvmops.migration.plugins.module_utils import _tls

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(k: t.Any) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def pem_cert(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


class CA:
    """A CA that issues host certificates (server and client, as the role's)."""

    def __init__(self, name: str = "kvmops test CA", not_after: datetime.datetime | None = None) -> None:
        self.key = key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - 10 * DAY).not_valid_after(not_after or NOW + 3650 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def issue(self, cn: str, names: t.Sequence[str] = (), *, not_before: datetime.datetime | None = None,
              not_after: datetime.datetime | None = None, eku: t.Sequence[t.Any] | None = None,
              host_key: t.Any = None) -> tuple[t.Any, x509.Certificate]:
        host_key = host_key or key()
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.cert.subject).public_key(host_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or NOW - DAY).not_valid_after(not_after or NOW + 365 * DAY)
                   .add_extension(x509.ExtendedKeyUsage(list(eku) if eku is not None else [
                       ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return host_key, builder.sign(self.key, hashes.SHA256())


def install(directory: str, ca: CA, host_key: t.Any, cert: x509.Certificate, *,
            skip: t.Sequence[str] = (), key_mode: int = 0o640) -> None:
    """Write the five files of the /etc/pki/qemu layout (``skip``: roles left out)."""
    os.makedirs(directory, exist_ok=True)
    content = {"ca": pem_cert(ca.cert), "server_cert": pem_cert(cert), "client_cert": pem_cert(cert),
               "server_key": pem_key(host_key), "client_key": pem_key(host_key)}
    for role, name in _tls.FILES.items():
        if role in skip:
            continue
        path = os.path.join(directory, name)
        with open(path, "wb") as handle:
            handle.write(content[role])
        os.chmod(path, key_mode if role.endswith("_key") else 0o644)


def material(directory: str, ca: CA, names: t.Sequence[str], cn: str = "host", **issue: t.Any) -> dict[str, t.Any]:
    """:func:`_tls.read_host_tls` of a host whose certificate names ``names`` (QEMU as root)."""
    host_key, cert = ca.issue(cn, names, **issue)
    install(directory, ca, host_key, cert)
    return _tls.read_host_tls("", directory=directory, identity={"user": "root", "uid": 0, "gids": [0]})


def pair(tmp_path: t.Any, dest: str = "198.18.0.2", ca: CA | None = None,
         more_dest_names: t.Sequence[str] = ()) -> tuple[dict[str, t.Any], dict[str, t.Any]]:
    """(source material, destination material) of two hosts of one CA, valid at :data:`NOW`; the
    destination's certificate names hostb, ``dest`` and ``more_dest_names``."""
    ca = ca or CA()
    return (material(str(tmp_path / "src-pki"), ca, ["hosta", "198.18.0.1"], "hosta"),
            material(str(tmp_path / "dst-pki"), ca, ["hostb", dest, *more_dest_names], "hostb"))
