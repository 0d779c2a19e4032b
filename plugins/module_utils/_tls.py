# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""QEMU's native TLS for the migration streams: what a host holds, what a pair of hosts needs,
and which transport protects a move.

With ``VIR_MIGRATE_TLS`` the source's QEMU is the TLS client of the destination's QEMU for the
memory stream and, on current libvirt, for the NBD disk stream. Each QEMU reads its credentials
itself, as the QEMU user of qemu.conf (``user``/``group``, ``libvirt-qemu`` on Debian, ``qemu``
on Fedora/RHEL), from ``migrate_tls_x509_cert_dir`` (default ``default_tls_x509_cert_dir``,
default ``/etc/pki/qemu``):

* the source (client): ``ca-cert.pem``, ``client-cert.pem``, ``client-key.pem``;
* the destination (server): ``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``; with
  ``migrate_tls_x509_verify`` (default 1) it asks the source for its client certificate.

The source checks that the destination's server certificate names the host it dials (the address
of the migration URI, or ``VIR_MIGRATE_PARAM_TLS_DESTINATION``), as GnuTLS's
``gnutls_x509_crt_check_hostname`` does: the subjectAltName DNS or IP entries, the common name
only when the certificate has no subjectAltName.

Shapes:

* :func:`read_host_tls` (on each host): ``{dir, qemu_user, qemu_group, files: {ROLE: {path,
  exists, readable_by_qemu, problem}}, certs: {ROLE: PEM text}, keys: {ROLE: {spki_sha256,
  problem}}}`` with ROLE ``ca``, ``server_cert``, ``server_key``, ``client_cert``,
  ``client_key``; certificates are public and travel in full, of a key only the SHA-256 of its
  public key (to match it with its certificate) and whether it loads.
* :func:`pair_faults` (on the source): the faults of a pair, as :class:`Fault` items.
* :func:`decide` (pure): the transport decision table of the pre-flight.

Relies on: python ``cryptography`` (x509, serialization; versions 3.4 and later, Debian 12's
38.0), libvirt's qemu.conf (``user``, ``group``, ``default_tls_x509_cert_dir``,
``migrate_tls_x509_cert_dir``), https://libvirt.org/kbase/tlscerts.html and QEMU's "TLS setup
for network services" (key usage digitalSignature/keyEncipherment, extended key usage
serverAuth/clientAuth, CA basic constraints).
"""

from __future__ import annotations

import dataclasses
import datetime
import grp
import hashlib
import ipaddress
import os
import pwd
import typing as t
from urllib.parse import parse_qs, urlsplit

from ansible_collections.kvmops.migration.plugins.module_utils import _conf

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = None
except ImportError as _err:  # pragma: no cover - the module says which package to install
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = str(_err)

QEMU_CONF = "/etc/libvirt/qemu.conf"
DEFAULT_CERT_DIR = "/etc/pki/qemu"
#: the QEMU users distributions build libvirt with, in the order they are tried when qemu.conf
#: sets none (Debian/Ubuntu, Fedora/RHEL/SUSE)
DEFAULT_QEMU_USERS = ("libvirt-qemu", "qemu")
#: what each role of a file is called in the certificate directory
FILES = {"ca": "ca-cert.pem", "server_cert": "server-cert.pem", "server_key": "server-key.pem",
         "client_cert": "client-cert.pem", "client_key": "client-key.pem"}
#: what each side of a move needs (the source is QEMU's TLS client, the destination its server)
CLIENT_ROLES = ("ca", "client_cert", "client_key")
SERVER_ROLES = ("ca", "server_cert", "server_key")
#: a certificate that expires sooner than this is a warning (seconds; 30 days)
RENEW_WARNING_S = 30 * 86400
#: what the user sets to move in clear, in the role and in the modules
INSECURE_ROLE_VAR = "migrate_guest_allow_insecure_transport"
INSECURE_OPTION = "allow_insecure_transport"
FIX_PKI = ("run playbooks/prepare_hosts.yml on both hosts (the kvm_host role makes the PKI, "
           "kvm_host_tls: true, the default)")


@dataclasses.dataclass(frozen=True)
class Fault:
    """One reason TLS cannot protect a move: ``host`` (label), ``what`` (the file or the
    certificate), ``msg`` (the fault and its fix, for the operator), ``severity`` ``error`` or
    ``warning`` (a warning does not stop TLS: a certificate close to its end)."""

    host: str
    what: str
    msg: str
    severity: str = "error"


#: a setting of qemu.conf / libvirtd.conf (:func:`_conf.value`, the one reader of them)
conf_value = _conf.value


def cert_dir(qemu_conf: str | None) -> str:
    """The directory QEMU's migration TLS credentials are read from (qemu.conf
    ``migrate_tls_x509_cert_dir``, else ``default_tls_x509_cert_dir``, else /etc/pki/qemu)."""
    return (conf_value(qemu_conf, "migrate_tls_x509_cert_dir")
            or conf_value(qemu_conf, "default_tls_x509_cert_dir") or DEFAULT_CERT_DIR)


def qemu_identity(qemu_conf: str | None,
                  getpwnam: t.Callable[[str], t.Any] = pwd.getpwnam,
                  getgrnam: t.Callable[[str], t.Any] = grp.getgrnam,
                  getgrall: t.Callable[[], t.Any] = grp.getgrall) -> dict[str, t.Any]:
    """Who QEMU runs as: ``{user, group, uid, gid, gids}`` (gids: the primary and supplementary
    groups), from qemu.conf ``user``/``group`` or the distribution's default user; ``uid`` None
    when the user does not exist. ``+N`` means the numeric id N (qemu.conf(5))."""
    user = conf_value(qemu_conf, "user")
    group = conf_value(qemu_conf, "group")
    entry = None
    if user is None:
        for name in DEFAULT_QEMU_USERS:
            try:
                entry = getpwnam(name)
            except KeyError:
                continue
            user = name
            break
    elif user.startswith("+") and user[1:].isdigit():
        entry = _pw_by_uid(int(user[1:]))
    else:
        try:
            entry = getpwnam(user)
        except KeyError:
            entry = None
    out: dict[str, t.Any] = {"user": user, "group": group, "uid": None, "gid": None, "gids": []}
    if entry is None:
        return out
    out["uid"] = entry.pw_uid
    gid = entry.pw_gid
    if group is not None:
        if group.startswith("+") and group[1:].isdigit():
            gid = int(group[1:])
        else:
            try:
                gid = getgrnam(group).gr_gid
            except KeyError:
                gid = None
    out["gid"] = gid
    gids = {g.gr_gid for g in getgrall() if entry.pw_name in g.gr_mem}
    if gid is not None:
        gids.add(gid)
    out["gids"] = sorted(gids)
    if out["group"] is None and gid is not None:
        out["group"] = _group_name(gid)
    return out


def _pw_by_uid(uid: int) -> t.Any:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _group_name(gid: int) -> str:
    try:
        return str(grp.getgrgid(gid).gr_name)
    except KeyError:
        return str(gid)


def readable_by(path: str, uid: int | None, gids: t.Sequence[int],
                stat: t.Callable[[str], os.stat_result] = os.stat) -> str | None:
    """None when the user ``uid`` (with groups ``gids``) can read ``path`` by its mode bits and
    can search every directory above it, else why not (the path and its owner and mode). root
    (uid 0) reads everything; ACLs are not read."""
    if uid == 0:
        return None
    if uid is None:
        return "the QEMU user does not exist on this host"
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        current = os.sep.join(parts[:i]) or os.sep
        try:
            st = stat(current)
        except OSError as err:
            return "%s cannot be read (%s)" % (current, err.strerror or err)
        need = 0o1 if i < len(parts) else 0o4
        if st.st_uid == uid:
            bits = (st.st_mode >> 6) & 0o7
        elif st.st_gid in gids:
            bits = (st.st_mode >> 3) & 0o7
        else:
            bits = st.st_mode & 0o7
        if not bits & need:
            return "%s is %s (owner %s, group %s, mode %04o)" % (
                current, "not searchable" if need == 0o1 else "not readable",
                _owner(st.st_uid), _group_name(st.st_gid), st.st_mode & 0o7777)
    return None


def _owner(uid: int) -> str:
    entry = _pw_by_uid(uid)
    return str(entry.pw_name) if entry is not None else str(uid)


# --------------------------------------------------------------------------------------------
# Reading a host (runs on each host, as root)
# --------------------------------------------------------------------------------------------

def read_host_tls(qemu_conf: str | None = None, *, directory: str | None = None,
                  identity: dict[str, t.Any] | None = None,
                  read_bytes: t.Callable[[str], bytes] | None = None,
                  stat: t.Callable[[str], os.stat_result] = os.stat) -> dict[str, t.Any]:
    """What this host holds for QEMU's migration TLS (the shape in the module docstring).

    :param qemu_conf: the text of qemu.conf (None: read from :data:`QEMU_CONF`).
    :raises KvmopsError: never; an unreadable file is a ``problem`` of that file.
    """
    if qemu_conf is None:
        qemu_conf = read_text(QEMU_CONF)
    directory = directory or cert_dir(qemu_conf)
    identity = identity if identity is not None else qemu_identity(qemu_conf)
    read_bytes = read_bytes or _read_bytes
    out: dict[str, t.Any] = {"dir": directory, "qemu_user": identity.get("user"),
                             "qemu_group": identity.get("group"), "files": {}, "certs": {}, "keys": {},
                             "cryptography": HAS_CRYPTOGRAPHY}
    for role, name in FILES.items():
        path = os.path.join(directory, name)
        entry: dict[str, t.Any] = {"path": path, "exists": False, "readable_by_qemu": False, "problem": None}
        out["files"][role] = entry
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            entry["problem"] = "missing"
            continue
        except OSError as err:
            entry["exists"] = os.path.lexists(path)
            entry["problem"] = "unreadable (%s)" % (err.strerror or err)
            continue
        entry["exists"] = True
        why = readable_by(path, identity.get("uid"), identity.get("gids") or [], stat)
        entry["readable_by_qemu"] = why is None
        if why is not None:
            entry["problem"] = "not readable by QEMU's user %s: %s" % (identity.get("user"), why)
        if role.endswith("_key"):
            out["keys"][role] = key_summary(data)
        else:
            out["certs"][role] = data.decode("ascii", "replace")[:65536]
    return out


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(1 << 20)


def read_text(path: str) -> str | None:
    """The text of a file (UTF-8, undecodable bytes replaced), None when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def key_summary(pem: bytes) -> dict[str, t.Any]:
    """``{spki_sha256, problem}`` of a PEM private key: the SHA-256 (hex) of its public key in
    SubjectPublicKeyInfo DER, to match it with a certificate; ``problem`` when it does not load
    (encrypted keys need a libvirt secret, which this collection does not set up)."""
    if not HAS_CRYPTOGRAPHY:
        return {"spki_sha256": None, "problem": "python cryptography is missing: %s" % CRYPTOGRAPHY_IMPORT_ERROR}
    try:
        key = _load_private_key(pem)
    except TypeError:
        return {"spki_sha256": None, "problem": "the key is encrypted with a passphrase: QEMU reads it "
                "only with a libvirt secret; install an unencrypted key readable by QEMU's user"}
    except (ValueError, UnsupportedAlgorithm) as err:
        return {"spki_sha256": None, "problem": "not a PEM private key (%s)" % _brief(err)}
    return {"spki_sha256": _spki_sha256(key.public_key()), "problem": None}


def _load_private_key(pem: bytes) -> t.Any:
    """The private key of ``pem`` (``serialization.load_pem_private_key``), without the RSA
    consistency check where python-cryptography can skip it (39 and later).

    That check proves the primes; it is what makes loading a 4096-bit key cost about half a
    second, on every host_info, pre-flight and migrate run. Only the public key is used here (to
    match it with a certificate): QEMU itself proves the key in its TLS handshake.

    :raises TypeError: the key is encrypted (as ``load_pem_private_key``).
    :raises ValueError: not a PEM private key.
    """
    if _SKIP_RSA_CHECK:
        return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    return serialization.load_pem_private_key(pem, password=None)


def _skip_rsa_check_supported() -> bool:
    if not HAS_CRYPTOGRAPHY:
        return False
    try:
        import cryptography
        return int(cryptography.__version__.split(".")[0]) >= 39
    except (ImportError, ValueError, AttributeError):
        return False


#: python-cryptography takes ``unsafe_skip_rsa_key_validation`` (39.0 and later)
_SKIP_RSA_CHECK = _skip_rsa_check_supported()


def _spki_sha256(public_key: t.Any) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _brief(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


# --------------------------------------------------------------------------------------------
# Certificates (pure)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class CertInfo:
    """What the checks need of one certificate. Times are seconds since the epoch (UTC)."""

    subject: str
    issuer: str
    common_name: str | None
    dns_names: list[str]
    ip_addresses: list[str]
    not_before: float
    not_after: float
    is_ca: bool
    extended_key_usage: list[str] | None
    spki_sha256: str
    cert: t.Any = dataclasses.field(repr=False, default=None)


def parse_cert(pem: str | bytes) -> CertInfo:
    """The :class:`CertInfo` of the first certificate of a PEM text.

    :raises ValueError: not a PEM certificate (the message says why); the text may come from a
        host that an attacker controls, so nothing of it is trusted beyond the parse.
    """
    if not HAS_CRYPTOGRAPHY:
        raise ValueError("python cryptography is missing: %s" % CRYPTOGRAPHY_IMPORT_ERROR)
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except (ValueError, UnsupportedAlgorithm) as err:
        raise ValueError("not a PEM certificate (%s)" % _brief(err)) from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        ips = [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        eku: list[str] | None = [oid.dotted_string for oid in
                                 cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        eku = None
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return CertInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                    common_name=str(cns[0].value) if cns else None, dns_names=dns, ip_addresses=ips,
                    not_before=_epoch(cert, "not_valid_before"), not_after=_epoch(cert, "not_valid_after"),
                    is_ca=is_ca, extended_key_usage=eku, spki_sha256=_spki_sha256(cert.public_key()),
                    cert=cert)


def _epoch(cert: t.Any, name: str) -> float:
    value = getattr(cert, name + "_utc", None)  # cryptography >= 42; the naive one is UTC too
    if value is None:
        value = getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
    return float(value.timestamp())


def signed_by(cert: CertInfo, ca: CertInfo) -> bool:
    """True when ``ca``'s key signed ``cert`` and ``cert``'s issuer is ``ca``'s subject (RSA
    PKCS#1 v1.5, ECDSA, Ed25519, Ed448 signatures; others are False)."""
    if cert.cert is None or ca.cert is None or cert.cert.issuer != ca.cert.subject:
        return False
    pub = ca.cert.public_key()
    sig, tbs = cert.cert.signature, cert.cert.tbs_certificate_bytes
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig, tbs, padding.PKCS1v15(), cert.cert.signature_hash_algorithm)
        elif isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, tbs, ec.ECDSA(cert.cert.signature_hash_algorithm))
        elif isinstance(pub, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            pub.verify(sig, tbs)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def names_host(cert: CertInfo, name: str) -> bool:
    """Whether ``cert`` is valid for the host ``name`` (an address or a DNS name), as GnuTLS's
    hostname check: IP addresses against IP entries; DNS names case-insensitively against DNS
    entries (a ``*`` left-most label matches one label); the common name only without any
    subjectAltName."""
    name = name.strip().strip("[]").rstrip(".")
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        addr = None
    if addr is not None:
        if cert.ip_addresses:
            return any(ipaddress.ip_address(ip) == addr for ip in cert.ip_addresses)
        return not cert.dns_names and cert.common_name == name
    candidates = cert.dns_names or ([] if cert.ip_addresses else [cert.common_name or ""])
    return any(_dns_match(pattern, name) for pattern in candidates)


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower()
    if pattern.startswith("*."):
        head, rest = name.split(".", 1) if "." in name else (name, "")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def _names(cert: CertInfo) -> str:
    listed = ["DNS:" + n for n in cert.dns_names] + ["IP:" + n for n in cert.ip_addresses]
    return ", ".join(listed) or "CN=%s" % cert.common_name


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def pair_faults(src: dict[str, t.Any] | None, dst: dict[str, t.Any] | None, *, src_label: str,
                dst_label: str, dest_name: str, now: float,
                renew_warning_s: float = RENEW_WARNING_S) -> list[Fault]:
    """Why QEMU's native TLS would fail between ``src`` (the TLS client) and ``dst`` (the
    server), both shaped as :func:`read_host_tls` returns; empty when it would work.

    Checked: each file present and readable by QEMU's user; each certificate parses, is within
    its validity at ``now`` (epoch seconds), carries the right extended key usage (clientAuth on
    the source, serverAuth on the destination) and matches its key; the destination's server
    certificate is signed by the source's CA and names ``dest_name`` (the address the source
    dials, or the TLS destination name); the source's client certificate is signed by the
    destination's CA (migrate_tls_x509_verify). A certificate ending within
    ``renew_warning_s`` is a warning.
    """
    faults: list[Fault] = []
    sides = ((src, src_label, CLIENT_ROLES, "client_cert", "client_key", ExtendedKeyUsageOID.CLIENT_AUTH
              if HAS_CRYPTOGRAPHY else None, "clientAuth"),
             (dst, dst_label, SERVER_ROLES, "server_cert", "server_key", ExtendedKeyUsageOID.SERVER_AUTH
              if HAS_CRYPTOGRAPHY else None, "serverAuth"))
    parsed: dict[str, dict[str, CertInfo]] = {src_label: {}, dst_label: {}}
    for side, label, roles, cert_role, key_role, eku_oid, eku_name in sides:
        if side is None:  # not read (the caller says so): only the other side is checked
            continue
        if not side.get("cryptography", True):
            faults.append(Fault(label, "python3-cryptography", "python cryptography is missing on %s: "
                                "install python3-cryptography there (the kvm_host role does)" % label))
            continue
        files = side.get("files") or {}
        if all(((files.get(role) or {}).get("problem") == "missing") for role in roles):
            faults.append(Fault(label, side.get("dir") or DEFAULT_CERT_DIR, "%s has no migration certificates "
                                "(%s missing in %s): %s" % (label, ", ".join(FILES[r] for r in roles),
                                                            side.get("dir") or DEFAULT_CERT_DIR, FIX_PKI)))
            continue
        for role in roles:
            entry = files.get(role) or {}
            if entry.get("problem"):
                faults.append(Fault(label, entry.get("path") or role, "%s on %s is %s: %s" % (
                    entry.get("path") or FILES[role], label, entry["problem"], _file_fix(role, entry))))
        for role in (r for r in roles if not r.endswith("_key")):
            pem = (side.get("certs") or {}).get(role)
            if not pem:
                continue
            path = ((side.get("files") or {}).get(role) or {}).get("path") or FILES[role]
            try:
                info = parse_cert(pem)
            except ValueError as err:
                faults.append(Fault(label, path, "%s on %s is %s: %s" % (path, label, err, FIX_PKI)))
                continue
            parsed[label][role] = info
            faults.extend(_validity(info, path, label, now, renew_warning_s))
            if role == "ca" and not info.is_ca:
                faults.append(Fault(label, path, "%s on %s is not a CA certificate (basic constraints "
                                    "CA:FALSE or absent): install the CA's certificate there" % (path, label)))
            if role == cert_role and info.extended_key_usage is not None and eku_oid is not None \
                    and eku_oid.dotted_string not in info.extended_key_usage:
                faults.append(Fault(label, path, "%s on %s is not valid for TLS %s (extended key usage "
                                    "without %s): issue it with %s; %s" % (
                                        path, label, "client" if cert_role == "client_cert" else "server",
                                        eku_name, eku_name, FIX_PKI)))
        key = (side.get("keys") or {}).get(key_role) or {}
        cert = parsed[label].get(cert_role)
        key_path = ((side.get("files") or {}).get(key_role) or {}).get("path") or FILES[key_role]
        if key.get("problem"):
            faults.append(Fault(label, key_path, "%s on %s: %s" % (key_path, label, key["problem"])))
        elif cert is not None and key.get("spki_sha256") and key["spki_sha256"] != cert.spki_sha256:
            faults.append(Fault(label, key_path, "%s on %s is not the key of %s: install the key and "
                                "certificate issued together; %s" % (key_path, label, FILES[cert_role], FIX_PKI)))
    s, d = parsed[src_label], parsed[dst_label]
    server, client = d.get("server_cert"), s.get("client_cert")
    if server is not None and s.get("ca") is not None and not signed_by(server, s["ca"]):
        faults.append(Fault(dst_label, FILES["server_cert"], "the server certificate of %s (issuer %s) is "
                            "not signed by the CA %s trusts (%s): the hosts do not share a CA; give both "
                            "the same kvm_host_tls_ca_dir (or CA) and %s" % (
                                dst_label, server.issuer, src_label, s["ca"].subject, FIX_PKI)))
    if client is not None and d.get("ca") is not None and not signed_by(client, d["ca"]):
        faults.append(Fault(src_label, FILES["client_cert"], "the client certificate of %s (issuer %s) "
                            "is not signed by the CA %s trusts (%s): the hosts do not share a CA; give "
                            "both the same kvm_host_tls_ca_dir (or CA) and %s" % (
                                src_label, client.issuer, dst_label, d["ca"].subject, FIX_PKI)))
    if server is not None and dest_name and not names_host(server, dest_name):
        faults.append(Fault(dst_label, FILES["server_cert"], "the server certificate of %s names %s, not "
                            "%s, the name the source dials: add it to the certificate (kvm_host_tls_names "
                            "and rerun prepare_hosts.yml) or give the name it holds as tls_destination" % (
                                dst_label, _names(server), dest_name)))
    return faults


def _validity(info: CertInfo, path: str, label: str, now: float, renew_warning_s: float) -> list[Fault]:
    if now < info.not_before:
        return [Fault(label, path, "%s on %s is not valid before %s (the host's clock, or a certificate "
                      "from the future): check the clocks (chrony/NTP) or reissue it" % (
                          path, label, _when(info.not_before)))]
    if now >= info.not_after:
        return [Fault(label, path, "%s on %s expired on %s: renew it (prepare_hosts.yml -e "
                      "kvm_host_tls_renew=true)" % (path, label, _when(info.not_after)))]
    if info.not_after - now < renew_warning_s:
        return [Fault(label, path, "%s on %s expires on %s: renew it soon (prepare_hosts.yml -e "
                      "kvm_host_tls_renew=true)" % (path, label, _when(info.not_after)), "warning")]
    return []


def _file_fix(role: str, entry: dict[str, t.Any]) -> str:
    if entry.get("exists") and not entry.get("readable_by_qemu"):
        return ("QEMU opens it itself when the move starts; give it to QEMU's group (%s) with mode "
                "0640 as the kvm_host role does, or %s" % ("key" if role.endswith("_key") else "file", FIX_PKI))
    return FIX_PKI


# --------------------------------------------------------------------------------------------
# The transport decision (pure)
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Transport:
    """Which transport protects the move's streams.

    ``tls``: pass ``VIR_MIGRATE_TLS``; ``memory``/``disks``: ``tls``, ``plain`` or ``none``
    (nothing streamed: an offline move, or no disk copied); ``control``: the libvirt connection's
    scheme (``ssh``, ``tls``, ``tcp``, ...); ``findings``: ``(status, check, msg, host)`` tuples
    (``host`` the fault's host label, None: the move as a whole)."""

    tls: bool
    memory: str
    disks: str
    control: str
    findings: list[tuple[str, str, str, str | None]]

    def as_result(self) -> dict[str, t.Any]:
        return {"tls": self.tls, "memory": self.memory, "disks": self.disks, "control": self.control,
                "encrypted": self.memory != "plain" and self.disks != "plain"}


def uri_insecurity(uri: str) -> str | None:
    """Why a libvirt destination URI is insecure (``qemu+tcp://``: no encryption, no
    authentication of the host; ``no_verify=1``: the host's certificate is not checked), or None."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    scheme = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
    if scheme == "tcp":
        return "the libvirt connection %s (qemu+tcp) is neither encrypted nor authenticated" % uri
    if any(v.strip() not in ("", "0") for v in parse_qs(parts.query).get("no_verify", [])):
        return "the libvirt connection %s does not check the host's certificate (no_verify)" % uri
    return None


def decide(tls: bool | None, allow_insecure: bool, *, live: bool, copies_disks: bool, dest_uri: str,
           faults: t.Sequence[Fault], insecure_var: str = INSECURE_ROLE_VAR) -> Transport:
    """The transport decision table.

    :param tls: True (TLS asked: every fault is an error), False (plain asked: allowed only with
        ``allow_insecure``), None (auto: TLS when there is no fault; otherwise an error unless
        ``allow_insecure``, then plain with a warning).
    :param live: the guest runs (memory is streamed); False: an offline move streams nothing.
    :param faults: :func:`pair_faults` (warnings never stop TLS).
    :param insecure_var: the name of the setting quoted in the messages.
    """
    parts = urlsplit(dest_uri)
    control = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ("tls" if parts.hostname else "local")
    findings: list[tuple[str, str, str, str | None]] = []

    def add(status: str, check: str, msg: str, host: str | None = None) -> None:
        findings.append((status, check, msg, host))

    bad_uri = uri_insecurity(dest_uri)
    if bad_uri:
        if allow_insecure:
            add("warning", "transport_uri", "%s: allowed by %s." % (bad_uri, insecure_var))
        else:
            add("error", "transport_uri", "%s: use qemu+ssh:// or qemu+tls:// without no_verify, or set "
                "%s: true to accept it." % (bad_uri, insecure_var))
    if not live:
        add("ok", "transport", "Offline move: no memory or disk stream crosses the network (only the "
            "definition, over the libvirt connection).")
        return Transport(False, "none", "none", control, findings)
    errors = [f for f in faults if f.severity == "error"]
    streams = "guest memory and disks" if copies_disks else "guest memory"
    streams_cap = streams[0].upper() + streams[1:]
    disks_tls, disks_plain = ("tls", "plain") if copies_disks else ("none", "none")
    for fault in faults:
        if fault.severity != "error":
            add("warning", "tls_certificates", fault.msg, fault.host)
    if tls is False:
        if allow_insecure:
            add("warning", "transport", "%s cross the network unencrypted, as asked (tls: false, %s: true)."
                % (streams_cap, insecure_var))
        else:
            add("error", "transport", "%s would cross the network unencrypted (tls: false): set %s: true to "
                "allow it, or drop tls: false to use TLS." % (streams_cap, insecure_var))
        return Transport(False, "plain", disks_plain, control, findings)
    if not errors:
        add("ok", "transport", "%s cross the network encrypted with QEMU's native TLS (VIR_MIGRATE_TLS); "
            "the certificates checked are valid and of one CA." % streams_cap)
        return Transport(True, "tls", disks_tls, control, findings)
    if tls is None and allow_insecure:
        for fault in errors:
            add("warning", "tls_certificates", fault.msg, fault.host)
        add("warning", "transport", "TLS cannot be used (%d fault(s) above): %s cross the network "
            "unencrypted, allowed by %s." % (len(errors), streams, insecure_var))
        return Transport(False, "plain", disks_plain, control, findings)
    for fault in errors:
        add("error", "tls_certificates", fault.msg, fault.host)
    if tls is None:
        add("error", "transport", "%s would cross the network unencrypted: TLS cannot be used (%d fault(s) "
            "above). Fix them (%s), or set %s: true to move in clear." % (
                streams_cap, len(errors), FIX_PKI, insecure_var))
    else:
        add("error", "transport", "TLS is asked (tls: true) but cannot be used (%d fault(s) above): fix "
            "them (%s)." % (len(errors), FIX_PKI))
    return Transport(True, "tls", disks_tls, control, findings)
