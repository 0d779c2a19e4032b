# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_host role's SSH trust (issue 13 item 4), run for real without the lab: two inventory
hosts on Ansible's local connection, every file under tmp_path. The keys are authorised only
from the group's inventory addresses, and the host keys pinned are the hosts' own key files
(read over the connection), not what a network scan of the addresses returns."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
COLLECTIONS = os.path.join(ROOT, ".cache", "collections")  # linked by tests/unit/conftest.py

PLAY = """\
- hosts: kvm_hosts
  gather_facts: false
  module_defaults:
    ansible.posix.authorized_key:
      path: "%(dir)s/{{ inventory_hostname }}/authorized_keys"
  vars:
    kvm_host_group: kvm_hosts
    kvm_host_ssh_key_file: "%(dir)s/{{ inventory_hostname }}/ssh/id_ed25519"
    kvm_host_ssh_key_type: ed25519
    kvm_host_ssh_remote_user: root
    kvm_host_ssh_known_hosts_file: "%(dir)s/{{ inventory_hostname }}/known_hosts"
    kvm_host_ssh_host_key_type: ed25519
    kvm_host_ssh_host_key_file: "%(dir)s/{{ inventory_hostname }}/ssh_host_ed25519_key.pub"
    kvm_host_ssh_extra_from: ["192.0.2.0/24"]
  tasks:
    - name: The SSH trust of the kvm_host role
      ansible.builtin.include_tasks: %(root)s/roles/kvm_host/tasks/ssh_trust.yml
"""

INVENTORY = """\
all:
  children:
    kvm_hosts:
      hosts:
        kvm1: {ansible_host: 192.0.2.251}
        kvm2: {ansible_host: 192.0.2.252}
  vars:
    ansible_connection: local
    ansible_python_interpreter: %(python)s
"""

HOST_KEYS = {
    "kvm1": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyOfKvm1ForTheUnitTestOnly0000000 root@kvm1",
    "kvm2": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyOfKvm2ForTheUnitTestOnly0000000 root@kvm2",
}


def play(tmp_path, *extra):
    from ansible_collections.ansible import posix  # pylint: disable=import-outside-toplevel
    site = os.path.dirname(os.path.dirname(os.path.dirname(list(posix.__path__)[0])))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([COLLECTIONS, site]),
               ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
    res = subprocess.run([PLAYBOOK, "-i", str(tmp_path / "inventory.yml"), str(tmp_path / "play.yml")] + list(extra),
                         capture_output=True, text=True, env=env, check=False, timeout=300)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return res


@pytest.fixture
def group(tmp_path):
    pytest.importorskip("ansible_collections.ansible.posix")
    pytest.importorskip("ansible_collections.community.crypto")
    if not os.path.exists(PLAYBOOK):
        pytest.skip("ansible-playbook is not in this Python's environment")
    for host, key in HOST_KEYS.items():
        os.makedirs(tmp_path / host)
        (tmp_path / host / "ssh_host_ed25519_key.pub").write_text(key + "\n", encoding="utf-8")
    (tmp_path / "play.yml").write_text(PLAY % {"dir": tmp_path, "root": ROOT}, encoding="utf-8")
    (tmp_path / "inventory.yml").write_text(INVENTORY % {"python": sys.executable}, encoding="utf-8")
    return tmp_path


def test_keys_are_authorised_from_the_group_addresses_and_host_keys_come_from_the_key_files(group):
    first = play(group)
    # every host of the group, itself included (the CPU normalisation validates on every host
    # over qemu+ssh from one of them, by its inventory address)
    for host in ("kvm1", "kvm2"):
        authorized = (group / host / "authorized_keys").read_text(encoding="utf-8").splitlines()
        assert len(authorized) == 2, authorized
        for line in authorized:
            assert line.startswith('from="192.0.2.251,192.0.2.252,192.0.2.0/24" ssh-ed25519 '), line
        known = (group / host / "known_hosts").read_text(encoding="utf-8").splitlines()
        for peer in ("kvm1", "kvm2"):
            peer_key = (group / peer / "ssh" / "id_ed25519.pub").read_text(encoding="utf-8").split()[1]
            assert sum(peer_key in line for line in authorized) == 1
            address = "192.0.2.%d" % (251 if peer == "kvm1" else 252)
            assert "%s,%s %s" % (peer, address, " ".join(HOST_KEYS[peer].split()[:2])) in known, known
        assert len(known) == 2, known
    assert "ssh-keyscan" not in first.stdout
    again = play(group)
    assert "changed=0" in again.stdout.split("PLAY RECAP")[-1]
    # a key authorised without from= (as the lab or an older run of the role left it) gets it
    path = group / "kvm1" / "authorized_keys"
    path.write_text(path.read_text(encoding="utf-8").split(" ", 1)[1], encoding="utf-8")
    play(group)
    assert path.read_text(encoding="utf-8").startswith('from="192.0.2.251,192.0.2.252,192.0.2.0/24" ')
