# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one classification of libvirt's error texts (``_libvirt.FAILURE_CAUSES``): each class of
fault between the hosts is told apart from the text libvirt really prints, and its message names
the fix (the kvm_host task or variable, or the exact command)."""

from __future__ import annotations

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils import _migration

# Error texts as libvirt reports them (users' reports of virsh, virt-manager, libvirt-python;
# libvirt wraps ssh's or virt-ssh-helper's stderr as "Cannot recv data: ...: Connection reset by peer").
REAL = [
    ("Cannot recv data: Host key verification failed.: Connection reset by peer",
     "host_key_untrusted", ["kvm_host_ssh", "Pin the other hypervisors' host keys", "ssh-keygen -R hostb"]),
    ("Cannot recv data: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n@    WARNING: REMOTE "
     "HOST IDENTIFICATION HAS CHANGED!     @\r\n: Connection reset by peer",
     "host_key_untrusted", ["ssh-keygen -R hostb"]),
    ("Cannot recv data: Warning: Permanently added '10.0.0.2' (RSA) to the list of known hosts. Permission "
     "denied, please try again. Permission denied, please try again. Permission denied "
     "(publickey,gssapi-keyex,gssapi-with-mic,password).: Connection reset by peer",
     "key_refused", ["Authorise the other hypervisors' keys", "kvm_host_ssh_extra_from",
                     "ssh -o BatchMode=yes root@hostb true"]),
    ("Cannot recv data: root@198.18.0.2: Permission denied (publickey).: Connection reset by peer",
     "key_refused", ["kvm_host_ssh"]),
    ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': Permission denied",
     "socket_denied", ["usermod -aG libvirt root", "migrate_guest_dest_user"]),
    ("Cannot recv data: Failed to connect socket to '/var/run/libvirt/virtqemud-sock': Permission denied: "
     "Connection reset by peer", "socket_denied", ["virtqemud-sock"]),
    ("authentication unavailable: no polkit agent available to authenticate action 'org.libvirt.unix.manage'",
     "socket_denied", ["libvirt group"]),
    ("Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory",
     "libvirtd_down", ["systemctl enable --now libvirtd", "Start and enable the libvirt daemon"]),
    ("Cannot recv data: Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or "
     "directory: Connection reset by peer", "libvirtd_down", ["kvm_host_manage_service"]),
    ("Failed to connect socket to '/var/run/libvirt/virtqemud-sock': Connection refused",
     "libvirtd_down", ["virtqemud.socket"]),
    ("Cannot recv data: nc: unix connect failed: No such file or directory: Connection reset by peer",
     "libvirtd_down", ["libvirtd"]),
    ("unable to connect to server at 'hostb:16514': Connection refused",
     "tls_not_listening", ["libvirtd-tls.socket", "kvm_host_tls"]),
    ("Cannot recv data: ssh: Could not resolve hostname hostb: Name or service not known: Connection reset "
     "by peer", "name_unresolved", ["does not resolve", "/etc/hosts"]),
    ("Unable to resolve address 'dst' service '49152': Name or service not known",
     "name_unresolved", ["ansible_host"]),
    ("Cannot recv data: ssh: connect to host 198.18.0.2 port 22: Connection refused: Connection reset by "
     "peer", "ssh_unreachable", ["sshd"]),
    ("Unsafe migration: Migration without shared storage is unsafe",
     "unsafe_not_shared", ["shared_filesystems", "/etc/libvirt/qemu.conf", "copy_storage: all"]),
    ("Unsafe migration: Migration may lead to data corruption if disks use cache other than none or "
     "directsync", "unsafe_cache", ["cache='none'", "virsh edit vm1"]),
    ("operation failed: migration out job: unexpectedly failed: No space left on device",
     "no_space", ["free space on hostb"]),
    ("internal error: client socket is closed", "connection_broke", ["libvirtd runs on hostb"]),
]


@pytest.mark.parametrize("text,kind,names", REAL, ids=[r[1] + "-" + str(i) for i, r in enumerate(REAL)])
def test_each_fault_is_told_apart_and_names_its_fix(text, kind, names):
    assert _libvirt.classify_failure(text) == kind
    msg = _libvirt.explain_failure(text, "hostb", "vm1", "root")
    for name in names:
        assert name in msg, (name, msg)
    # never the old catch-all for a fault that has its own fix
    if kind in _libvirt.CONNECTION_CAUSES:
        assert "check that libvirtd runs there" not in msg


def test_unknown_text_is_not_guessed():
    assert _libvirt.classify_failure("something new") is None
    assert _libvirt.explain_failure("something new", "hostb") is None
    assert _migration.explain_failure("something new", "hostb", "vm1") == "libvirt reported an error"


def test_connection_message_names_the_uri_host_and_user():
    msg = _libvirt.connection_failure_message(
        "qemu+ssh://admin@198.18.0.2/system",
        "Cannot recv data: admin@198.18.0.2: Permission denied (publickey).: Connection reset by peer")
    assert msg.startswith("Could not connect to libvirt at qemu+ssh://admin@198.18.0.2/system: 198.18.0.2 "
                          "refused the source's SSH key for user admin.")
    assert "ssh -o BatchMode=yes admin@198.18.0.2 true" in msg


def test_connection_message_keeps_the_generic_advice_for_unknown_texts():
    msg = _libvirt.connection_failure_message("qemu+ssh://root@hostb/system", "some other failure")
    assert "check that libvirtd runs there" in msg


def test_migration_failure_uses_the_same_table():
    # the migrate module's explanation is the one of _libvirt (one home)
    text = "Cannot recv data: Host key verification failed.: Connection reset by peer"
    assert _migration.explain_failure(text, "hostb", "vm1") == _libvirt.explain_failure(text, "hostb", "vm1")
