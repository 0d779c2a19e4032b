# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TLS checks and the transport decision table (issue 15), on real certificates."""

from __future__ import annotations

import collections
import os
import stat as statmod

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from ansible_collections.kvmops.migration.plugins.module_utils import _tls

from tls_fakes import CA, DAY, NOW, install, material, pair, pem_key

T = NOW.timestamp()


def faults(src, dst, dest="198.18.0.2", now=T):
    return _tls.pair_faults(src, dst, src_label="hosta", dst_label="hostb", dest_name=dest, now=now)


def errors(items):
    return [f.msg for f in items if f.severity == "error"]


# ------------------------------------------------------------------------------------------
# A pair of hosts
# ------------------------------------------------------------------------------------------

def test_a_pair_of_one_ca_has_no_fault(tmp_path):
    src, dst = pair(tmp_path)
    assert faults(src, dst) == []
    assert faults(src, dst, dest="hostb") == []  # the inventory name is in the certificate too


def test_material_lists_each_file_and_no_key_content(tmp_path):
    src = pair(tmp_path)[0]
    assert set(src["files"]) == set(_tls.FILES)
    assert all(f["exists"] and f["readable_by_qemu"] for f in src["files"].values())
    assert "PRIVATE" not in repr(src)  # of a key only the hash of its public key travels
    assert len(src["keys"]["client_key"]["spki_sha256"]) == 64


def test_no_certificates_at_all_is_one_fault_per_host_with_the_fix(tmp_path):
    empty = _tls.read_host_tls("", directory=str(tmp_path / "none"), identity={"uid": 0, "gids": []})
    found = errors(faults(empty, empty))
    assert len(found) == 2
    assert "hosta has no migration certificates" in found[0] and "prepare_hosts.yml" in found[0]
    assert "ca-cert.pem, client-cert.pem, client-key.pem" in found[0]
    assert "ca-cert.pem, server-cert.pem, server-key.pem" in found[1]


def test_expired_destination_certificate_names_the_date_and_renewal(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    dst = material(str(tmp_path / "d"), ca, ["198.18.0.2"], not_before=NOW - 30 * DAY, not_after=NOW - DAY)
    found = errors(faults(src, dst))
    assert any("server-cert.pem on hostb expired on 2026-11-30" in m and "kvm_host_tls_renew=true" in m
               for m in found), found


def test_certificate_from_the_future_points_at_the_clock(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"], not_before=NOW + DAY, not_after=NOW + 9 * DAY)
    dst = material(str(tmp_path / "d"), ca, ["198.18.0.2"])
    assert any("not valid before" in m and "clocks" in m for m in errors(faults(src, dst)))


def test_certificate_ending_soon_is_a_warning_only(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    dst = material(str(tmp_path / "d"), ca, ["198.18.0.2"], not_after=NOW + 5 * DAY)
    found = faults(src, dst)
    assert errors(found) == []
    assert [f.severity for f in found] == ["warning"]  # the server certificate the source checks
    assert "renew it soon" in found[0].msg


def test_hosts_of_two_cas_do_not_share_one(tmp_path):
    src = material(str(tmp_path / "s"), CA("site A CA"), ["198.18.0.1"])
    dst = material(str(tmp_path / "d"), CA("site B CA"), ["198.18.0.2"])
    found = errors(faults(src, dst))
    assert len(found) == 2
    assert "server certificate of hostb (issuer CN=site B CA) is not signed by the CA hosta trusts" in found[0]
    assert "client certificate of hosta" in found[1] and "kvm_host_tls_ca_dir" in found[1]


def test_same_ca_name_but_other_key_is_caught_by_the_signature(tmp_path):
    src = material(str(tmp_path / "s"), CA("kvmops CA"), ["198.18.0.1"])
    dst = material(str(tmp_path / "d"), CA("kvmops CA"), ["198.18.0.2"])
    assert len(errors(faults(src, dst))) == 2


def test_destination_certificate_must_name_the_address_dialled(tmp_path):
    src, dst = pair(tmp_path, dest="198.18.0.2")
    found = errors(faults(src, dst, dest="10.0.0.2"))
    assert len(found) == 1
    assert "names DNS:hostb, IP:198.18.0.2, not 10.0.0.2" in found[0] and "kvm_host_tls_names" in found[0]


def test_key_that_is_not_the_certificates(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    host_key, cert = ca.issue("hostb", ["198.18.0.2"])
    other_key = ca.issue("x", [])[0]
    install(str(tmp_path / "d"), ca, host_key, cert)
    with open(tmp_path / "d" / "server-key.pem", "wb") as handle:
        handle.write(pem_key(other_key))
    dst = _tls.read_host_tls("", directory=str(tmp_path / "d"), identity={"uid": 0, "gids": []})
    found = errors(faults(src, dst))
    assert found == ["%s on hostb is not the key of server-cert.pem: install the key and certificate issued "
                     "together; %s" % (tmp_path / "d" / "server-key.pem", _tls.FIX_PKI)]


def test_encrypted_key_is_named(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    host_key, cert = ca.issue("hostb", ["198.18.0.2"])
    install(str(tmp_path / "d"), ca, host_key, cert)
    with open(tmp_path / "d" / "server-key.pem", "wb") as handle:
        handle.write(host_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    dst = _tls.read_host_tls("", directory=str(tmp_path / "d"), identity={"uid": 0, "gids": []})
    assert any("encrypted with a passphrase" in m for m in errors(faults(src, dst)))


def test_server_only_certificate_cannot_be_a_client(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    dst = material(str(tmp_path / "d"), ca, ["198.18.0.2"])
    found = errors(faults(src, dst))
    assert len(found) == 1 and "not valid for TLS client" in found[0] and "clientAuth" in found[0]


@pytest.mark.parametrize("garbage", [b"", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                     b"\x00\xff" * 100, b"<domain/>"])
def test_hostile_certificate_text_is_a_named_fault_not_a_crash(tmp_path, garbage):
    src, dst = pair(tmp_path)
    dst["certs"]["server_cert"] = garbage.decode("latin-1")
    found = errors(faults(src, dst))
    if garbage:
        assert any("server-cert.pem on hostb is not a PEM certificate" in m for m in found), found
    else:  # empty: nothing to check against, the key cannot be matched either
        assert found == []


def test_ca_file_that_is_not_a_ca(tmp_path):
    ca = CA()
    host_key, cert = ca.issue("hostb", ["198.18.0.2"])
    install(str(tmp_path / "d"), ca, host_key, cert)
    with open(tmp_path / "d" / "ca-cert.pem", "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    dst = _tls.read_host_tls("", directory=str(tmp_path / "d"), identity={"uid": 0, "gids": []})
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    assert any("ca-cert.pem on hostb is not a CA certificate" in m for m in errors(faults(src, dst)))


# ------------------------------------------------------------------------------------------
# Readable by QEMU's user
# ------------------------------------------------------------------------------------------

St = collections.namedtuple("St", "st_uid st_gid st_mode")


def fake_stat(table):
    def stat(path):
        if path not in table:
            raise FileNotFoundError(2, "No such file or directory")
        return table[path]
    return stat


DIRS = {"/etc": St(0, 0, statmod.S_IFDIR | 0o755), "/etc/pki": St(0, 0, statmod.S_IFDIR | 0o755),
        "/etc/pki/qemu": St(0, 0, statmod.S_IFDIR | 0o755)}


@pytest.mark.parametrize("owner,group,mode,uid,gids,ok", [
    (0, 64055, 0o640, 64055, [64055], True),    # the role's: root:libvirt-qemu 0640
    (0, 0, 0o600, 64055, [64055], False),       # root only: QEMU cannot open it
    (0, 0, 0o644, 64055, [64055], True),
    (64055, 0, 0o400, 64055, [], True),
    (0, 0, 0o600, 0, [0], True),                # QEMU as root (user = "+0")
    (0, 0, 0o600, None, [], False),             # no such user
])
def test_readable_by(owner, group, mode, uid, gids, ok):
    table = dict(DIRS, **{"/etc/pki/qemu/server-key.pem": St(owner, group, statmod.S_IFREG | mode)})
    why = _tls.readable_by("/etc/pki/qemu/server-key.pem", uid, gids, fake_stat(table))
    assert (why is None) is ok, why


def test_unsearchable_directory_is_named():
    table = dict(DIRS, **{"/etc/pki/qemu": St(0, 0, statmod.S_IFDIR | 0o700),
                          "/etc/pki/qemu/ca-cert.pem": St(0, 0, statmod.S_IFREG | 0o644)})
    why = _tls.readable_by("/etc/pki/qemu/ca-cert.pem", 64055, [64055], fake_stat(table))
    assert why is not None and "/etc/pki/qemu is not searchable" in why and "mode 0700" in why


def test_key_unreadable_by_qemu_is_a_fault_with_the_fix(tmp_path):
    ca = CA()
    src = material(str(tmp_path / "s"), ca, ["198.18.0.1"])
    host_key, cert = ca.issue("hostb", ["198.18.0.2"])
    install(str(tmp_path / "d"), ca, host_key, cert, key_mode=0o600)
    me = os.getuid()
    stranger = me + 12345  # not the owner, in no group of the files
    dst = _tls.read_host_tls("", directory=str(tmp_path / "d"), identity={"user": "libvirt-qemu", "uid": stranger,
                                                                          "gids": [stranger]})
    found = errors(faults(src, dst))
    assert any("server-key.pem on hostb is not readable by QEMU's user libvirt-qemu" in m and "0640" in m
               for m in found), found


# ------------------------------------------------------------------------------------------
# Names, configuration
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("names,cn,dialled,ok", [
    (["198.18.0.2"], "hostb", "198.18.0.2", True),
    (["198.18.0.2"], "hostb", "198.18.0.3", False),
    (["hostb.example"], "x", "HOSTB.example.", True),
    (["*.example"], "x", "hostb.example", True),
    (["*.example"], "x", "a.b.example", False),
    ([], "hostb", "hostb", True),              # no subjectAltName: the common name
    (["other"], "hostb", "hostb", False),      # with one, the common name is not used
    (["fd00::2"], "x", "[fd00:0::2]", True),
    (["hostb"], "198.18.0.2", "198.18.0.2", False),  # an address needs an IP entry
])
def test_names_host(names, cn, dialled, ok):
    cert = CA().issue(cn, names)[1]
    info = _tls.parse_cert(cert.public_bytes(serialization.Encoding.PEM))
    assert _tls.names_host(info, dialled) is ok


def test_conf_values_and_cert_dir():
    conf = '#default_tls_x509_cert_dir = "/nope"\ndefault_tls_x509_cert_dir = "/etc/pki/site"  # ours\n'
    assert _tls.cert_dir(conf) == "/etc/pki/site"
    assert _tls.cert_dir(conf + 'migrate_tls_x509_cert_dir = "/etc/pki/migrate"\n') == "/etc/pki/migrate"
    assert _tls.cert_dir(None) == "/etc/pki/qemu"
    assert _tls.conf_value("migrate_tls_x509_verify = 0\n", "migrate_tls_x509_verify") == "0"


Pw = collections.namedtuple("Pw", "pw_name pw_uid pw_gid")
Gr = collections.namedtuple("Gr", "gr_name gr_gid gr_mem")


def test_qemu_identity_from_conf_and_defaults():
    users = {"libvirt-qemu": Pw("libvirt-qemu", 64055, 64055), "qemu": Pw("qemu", 107, 107)}
    groups = {"kvm": Gr("kvm", 108, ["libvirt-qemu"]), "libvirt-qemu": Gr("libvirt-qemu", 64055, [])}

    def getpwnam(name):
        return users[name]

    def getgrnam(name):
        return groups[name]

    ident = _tls.qemu_identity("", getpwnam, getgrnam, groups.values)
    assert (ident["user"], ident["uid"], ident["gids"]) == ("libvirt-qemu", 64055, [108, 64055])
    ident = _tls.qemu_identity('user = "qemu"\ngroup = "kvm"\n', getpwnam, getgrnam, groups.values)
    assert (ident["user"], ident["uid"], ident["gid"], ident["group"]) == ("qemu", 107, 108, "kvm")
    ident = _tls.qemu_identity('user = "nobody-here"\n', getpwnam, getgrnam, groups.values)
    assert ident["uid"] is None


# ------------------------------------------------------------------------------------------
# The transport decision table
# ------------------------------------------------------------------------------------------

SSH = "qemu+ssh://root@198.18.0.2/system"
BAD = [_tls.Fault("hostb", "server-cert.pem", "server-cert.pem on hostb expired")]
SOON = [_tls.Fault("hostb", "server-cert.pem", "expires soon", "warning")]


def statuses(decided):
    return {(item[1], item[0]) for item in decided.findings}


@pytest.mark.parametrize("tls,allow,flt,use_tls,memory,worst", [
    (None, False, [], True, "tls", "ok"),         # the default: encrypted
    (None, False, SOON, True, "tls", "warning"),
    (None, False, BAD, True, "tls", "error"),     # cannot encrypt, not allowed in clear: stop
    (None, True, BAD, False, "plain", "warning"),  # allowed: in clear, said so
    (True, True, BAD, True, "tls", "error"),      # asked for TLS: faults stop even when allowed
    (True, False, [], True, "tls", "ok"),
    (False, False, [], False, "plain", "error"),  # plain needs the variable
    (False, True, [], False, "plain", "warning"),
])
def test_decide(tls, allow, flt, use_tls, memory, worst):
    decided = _tls.decide(tls, allow, live=True, copies_disks=True, dest_uri=SSH, faults=flt)
    assert (decided.tls, decided.memory, decided.disks, decided.control) == (use_tls, memory, memory, "ssh")
    found = {item[0] for item in decided.findings}
    assert max(found, key=["ok", "warning", "error"].index) == worst
    assert decided.as_result()["encrypted"] is (memory == "tls")


def test_decide_unencrypted_error_names_the_variable_and_the_fix():
    decided = _tls.decide(None, False, live=True, copies_disks=True, dest_uri=SSH, faults=BAD)
    msg = [item[2] for item in decided.findings if item[1] == "transport"][0]
    assert msg.startswith("Guest memory and disks would cross the network unencrypted")
    assert "migrate_guest_allow_insecure_transport: true" in msg and "prepare_hosts.yml" in msg
    assert ("error", "tls_certificates", BAD[0].msg, "hostb") in decided.findings


def test_decide_offline_streams_nothing():
    decided = _tls.decide(False, False, live=False, copies_disks=False, dest_uri=SSH, faults=BAD)
    assert (decided.tls, decided.memory, decided.disks) == (False, "none", "none")
    assert statuses(decided) == {("transport", "ok")}


def test_decide_memory_only_move_says_so():
    decided = _tls.decide(None, False, live=True, copies_disks=False, dest_uri=SSH, faults=[])
    assert decided.disks == "none" and decided.findings[-1][2].startswith("Guest memory cross")


@pytest.mark.parametrize("uri,allow,status", [
    ("qemu+tcp://198.18.0.2/system", False, "error"),
    ("qemu+tcp://198.18.0.2/system", True, "warning"),
    ("qemu+tls://198.18.0.2/system?no_verify=1", False, "error"),
    ("qemu+tls://198.18.0.2/system?no_verify=0", False, None),
    ("qemu+tls://198.18.0.2/system", False, None),
    (SSH, False, None),
])
def test_insecure_destination_uris(uri, allow, status):
    decided = _tls.decide(None, allow, live=True, copies_disks=True, dest_uri=uri, faults=[])
    got = [item[0] for item in decided.findings if item[1] == "transport_uri"]
    assert got == ([status] if status else [])


# ------------------------------------------------------------------------------------------
# RSA keys as the kvm_host role makes them (4096 bits)
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_4096():
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=4096)


def test_rsa_key_summary_is_the_hash_of_its_public_key(rsa_4096):
    pem = rsa_4096.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    der = rsa_4096.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    import hashlib
    assert _tls.key_summary(pem) == {"spki_sha256": hashlib.sha256(der).hexdigest(), "problem": None}


def test_rsa_key_is_loaded_without_the_prime_check_where_cryptography_can_skip_it(rsa_4096, monkeypatch):
    """The check costs about 0.5 s per 4096-bit key on every host_info/pre-flight/migrate run; only
    the public key is used, so it is skipped (python-cryptography 39 and later)."""
    import cryptography
    assert _tls._SKIP_RSA_CHECK is (int(cryptography.__version__.split(".")[0]) >= 39)
    seen = []
    real = serialization.load_pem_private_key

    def spy(data, password, **kwargs):
        seen.append(kwargs)
        return real(data, password, **kwargs)

    monkeypatch.setattr(_tls.serialization, "load_pem_private_key", spy)
    pem = rsa_4096.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    assert _tls.key_summary(pem)["problem"] is None
    assert seen == [{"unsafe_skip_rsa_key_validation": True}] if _tls._SKIP_RSA_CHECK else [{}]
    # an encrypted key is still named as such on the fast path
    enc = rsa_4096.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(b"secret"))
    assert "encrypted with a passphrase" in _tls.key_summary(enc)["problem"]
