"""Fixtures for the lab tests: the real two-host lab of tests/lab/lab.py (libvirtd, QEMU,
sshd in namespaces). The lab is brought up once per session and taken down at the end unless
it was already up before the session (then it is left as found) or KVMOPS_LAB_KEEP=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import lab  # noqa: E402  (tests/lab/lab.py)

PYTHON = sys.executable


def lab_cmd(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``tests/lab/lab.py ARGS`` as a user would."""
    res = subprocess.run([PYTHON, os.path.join(ROOT, "tests", "lab", "lab.py")] + list(args),
                         text=True, capture_output=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("lab.py %s failed (%d):\n%s\n%s" % (" ".join(args), res.returncode, res.stdout, res.stderr))
    return res


def lab_status() -> dict:
    return json.loads(lab_cmd("status", "--json", check=False).stdout)


@pytest.fixture(scope="session")
def lab_up():
    """The lab, up, with the demo guest defined somewhere in it."""
    was_up = lab_status()["up"]
    lab_cmd("up")
    yield lab
    if not was_up and os.environ.get("KVMOPS_LAB_KEEP") != "1":
        lab_cmd("down")


def ansible_playbook(*args: str, check: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ansible-playbook from the checkout against the lab inventory."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    cmd = [os.path.join(os.path.dirname(PYTHON), "ansible-playbook"), "-i", os.path.join(lab.STATE, "inventory.yml")]
    res = subprocess.run(cmd + list(args), cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError("ansible-playbook %s failed (%d):\n%s\n%s" % (" ".join(args), res.returncode,
                                                                          res.stdout[-6000:], res.stderr[-3000:]))
    return res
