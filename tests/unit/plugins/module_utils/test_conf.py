# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of libvirt's configuration files (_conf), used by TLS (qemu.conf), host
facts (libvirtd.conf host_uuid) and the pre-flight (qemu.conf shared_filesystems)."""

from __future__ import annotations

from ansible_collections.kvmops.migration.plugins.module_utils import _checks_storage, _conf, _host, _tls

QEMU_CONF = """
# migrate_tls_x509_cert_dir = "/etc/pki/example"
migrate_tls_x509_cert_dir = "/etc/pki/first"
user = "+64055"   # numeric
max_files = 4096
migrate_tls_x509_cert_dir = "/etc/pki/qemu-migrate"
#shared_filesystems = [ "/var/lib/commented" ]
shared_filesystems = [
  "/srv/a",   # one
  "/srv/b",
]
"""


def test_scalars_last_setting_wins_quotes_and_numbers():
    assert _conf.value(QEMU_CONF, "migrate_tls_x509_cert_dir") == "/etc/pki/qemu-migrate"
    assert _conf.value(QEMU_CONF, "user") == "+64055"
    assert _conf.value(QEMU_CONF, "max_files") == "4096"
    assert _conf.value(QEMU_CONF, "group") is None
    assert _conf.value(None, "user") is None


def test_lists_span_lines_and_commented_examples_are_ignored():
    assert _conf.string_list(QEMU_CONF, "shared_filesystems") == ["/srv/a", "/srv/b"]
    assert _conf.string_list("# shared_filesystems = [\"/x\"]\n", "shared_filesystems") == []
    assert _conf.string_list(None, "shared_filesystems") == []


def test_every_reader_of_a_conf_file_is_this_one():
    assert _tls.conf_value is _conf.value
    assert _host.parse_host_uuid('host_uuid = "8c6a4b3e-1b8f-4d26-9b35-0f1c0b7d2a11"  # set by kvm_host\n'
                                 '# host_uuid = "00000000-0000-0000-0000-000000000000"\n') \
        == "8c6a4b3e-1b8f-4d26-9b35-0f1c0b7d2a11"
    assert _checks_storage.shared_filesystems(QEMU_CONF) == ["/srv/a", "/srv/b"]
