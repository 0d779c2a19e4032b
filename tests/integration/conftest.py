"""Fixtures for the lab tests: the real two-host lab of tests/lab/lab.py (libvirtd, QEMU,
sshd in namespaces). The lab is brought up once per session and taken down at the end unless
it was already up before the session (then it is left as found) or KVMOPS_LAB_KEEP=1.

The tests call single modules on the lab hosts through pytest-ansible's ``ansible_adhoc``
fixture (:func:`adhoc_module`), with the lab inventory. pytest.ini blocks that plugin for the
unit tests (it would need an inventory, and from a checkout with galaxy.yml it links the
collection into a ``collections/`` directory there), so the lab tests run with the options of
the Makefile's ``integration`` target (``LAB_PYTEST``)::

    ANSIBLE_COLLECTIONS_PATH=$PWD/.cache/collections python -m pytest -p pytest-ansible \
        --ansible-unit-inject-only --inventory /var/lib/kvmops-lab/inventory.yml tests/integration/...

(``make integration TESTS=tests/integration/test_x.py::test_y`` does that). Check mode and diff
go through :func:`run_module` (ansible-playbook), which pytest-ansible cannot give a call."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pytest_ansible.errors import AnsibleModuleError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

import lab  # noqa: E402  (tests/lab/lab.py)

# A skip whose reason is not listed in tests/skip_policy.py fails the run.
sys.path.insert(0, os.path.join(ROOT, "tests"))
import skip_policy  # noqa: E402

pytest_runtest_logreport = skip_policy.pytest_runtest_logreport
pytest_terminal_summary = skip_policy.pytest_terminal_summary
pytest_sessionfinish = skip_policy.pytest_sessionfinish

PYTHON = sys.executable
#: the lab's inventory: ansible-playbook's here, and pytest-ansible's (``--inventory``)
INVENTORY = os.path.join(lab.STATE, "inventory.yml")
HOW = ("run the lab tests with the options of the Makefile's integration target (LAB_PYTEST, and "
       "ANSIBLE_COLLECTIONS_PATH=.cache/collections), e.g. `make integration TESTS=tests/integration/test_x.py`")


def pytest_configure(config) -> None:
    """Refuse to run the lab tests without pytest-ansible on the lab inventory, with the options
    to use instead of a "fixture 'ansible_adhoc' not found" per test."""
    if not config.pluginmanager.hasplugin("pytest-ansible"):
        raise pytest.UsageError("the lab tests call modules through pytest-ansible, which is not loaded "
                                "(pytest.ini blocks it for the unit tests; -p pytest-ansible loads it): " + HOW)
    inventory = config.getoption("ansible_inventory")
    if os.path.realpath(str(inventory)) != os.path.realpath(INVENTORY):
        raise pytest.UsageError("pytest-ansible's inventory is %s, not the lab's %s: %s" % (inventory, INVENTORY, HOW))


def lab_cmd(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``tests/lab/lab.py ARGS`` as a user would."""
    res = subprocess.run([PYTHON, os.path.join(ROOT, "tests", "lab", "lab.py")] + list(args),
                         text=True, capture_output=True, timeout=timeout, check=False)
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


@pytest.fixture(scope="module")
def guest_on_hosta(lab_up):
    """A fresh migratetest2 running on hosta, nothing of it on hostb (images, manifest); the
    same again afterwards, as the demo expects the lab."""
    lab_cmd("guest", "--recreate", "--wait")
    yield
    lab_cmd("guest", "--recreate", "--wait")


def playbook_command(args: list[str] | tuple[str, ...], extra_env: dict[str, str] | None = None
                     ) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of ansible-playbook from the checkout against the lab inventory."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1", **(extra_env or {}))
    cmd = [os.path.join(os.path.dirname(PYTHON), "ansible-playbook"), "-i", INVENTORY]
    return cmd + list(args), env


def ansible_playbook(*args: str, check: bool = False, timeout: float = 900,
                     extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ansible-playbook from the checkout against the lab inventory."""
    cmd, env = playbook_command(args, extra_env)
    res = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError("ansible-playbook %s failed (%d):\n%s\n%s" % (
            " ".join(args), res.returncode, res.stdout[-6000:], res.stderr[-3000:]))
    return res


def migrate_json(guest: str, *args: str) -> tuple[subprocess.CompletedProcess, dict, str, dict]:
    """playbooks/migrate.yml for ``guest`` with the json callback: (result, the guest's
    ``kvmops_migrations`` entry of set_stats, stdout, the play's per-host stats); the dicts are
    empty when the output holds no JSON."""
    res = ansible_playbook("playbooks/migrate.yml", "-e", "vm=%s" % guest, *args, extra_env={
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_SHOW_CUSTOM_STATS": "1"})
    try:
        data = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError:
        return res, {}, res.stdout, {}
    stats = data.get("global_custom_stats") or data.get("custom_stats", {}).get("_run", {})
    return res, (stats or {}).get("kvmops_migrations", {}).get(guest, {}), res.stdout, data.get("stats", {})


def adhoc_module(ansible_adhoc, host: str, module: str, args: dict) -> dict:
    """Run one module (``kvmops.migration.NAME`` or any FQCN) on one lab host through
    pytest-ansible's ``ansible_adhoc`` fixture (pass the test's fixture): an ad-hoc task run in
    this process against the lab inventory (``--inventory``). Returns the result as a registered
    result holds it: ``failed``/``changed``/``msg`` and the module's return values.

    :raises pytest_ansible.errors.AnsibleConnectionFailure: the host was unreachable.
    Neither check mode nor diff: use :func:`run_module` for those.

    ansible-core 2.19's TaskQueueManager makes stdin, stdout and stderr non-inheritable in the
    process that runs it, here pytest's: every later command of the test would start with them
    closed (found in the lab: ``virsh blockresize`` after a call died of SIGPIPE writing its
    message). They are made inheritable again after each call."""
    try:
        call = getattr(ansible_adhoc()[host], module)
    except AnsibleModuleError as err:
        raise AssertionError("%s (is this collection on ANSIBLE_COLLECTIONS_PATH? %s)" % (err, HOW)) from err
    try:
        return dict(call(**args)[host])
    finally:
        for fd in (0, 1, 2):
            os.set_inheritable(fd, True)


def run_module(host: str, module: str, args: dict, check_mode: bool = False, diff: bool = False,
               timeout: float = 900) -> dict:
    """Run one module of ours (``kvmops.migration.NAME`` or any FQCN) on a lab host through
    ansible-playbook, as a user's task would, and return its result dict (``failed``/``changed``
    /``msg`` and the module's return values). Uses the json stdout callback.

    For the calls :func:`adhoc_module` cannot make: check mode and diff. pytest-ansible 26.10
    takes neither per call (an ad-hoc task's arguments are the module's; the play it builds has
    no ``check_mode``/``diff``), and its ``--check`` option is parsed but never given to the play
    (``PyTestAnsiblePlugin._load_ansible_config`` leaves it out); a session-wide option could not
    mix the four-way check's real and check-mode runs in one test anyway."""
    import tempfile

    import yaml

    # The json callback overwrites a result's ``action`` key with the task's action name (a
    # module may return its own ``action``, e.g. disk_image): the second task prints the
    # registered result, which is what a playbook sees.
    play = [{"hosts": host, "gather_facts": False,
             "tasks": [{"name": "run %s" % module, module: args, "register": "r", "ignore_errors": True},
                       {"name": "registered result", "ansible.builtin.debug": {"var": "r"}}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", dir=os.path.join(ROOT, ".cache"), delete=False) as f:
        yaml.safe_dump(play, f)
        path = f.name
    try:
        extra = (["--check"] if check_mode else []) + (["--diff"] if diff else [])
        res = ansible_playbook(path, *extra, timeout=timeout, extra_env={
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"})
    finally:
        os.unlink(path)
    try:
        data = json.loads(res.stdout[res.stdout.index("{"):])
    except ValueError as exc:
        raise AssertionError("no JSON from ansible-playbook:\n%s\n%s" % (res.stdout[-4000:], res.stderr[-2000:])) from exc
    return data["plays"][0]["tasks"][1]["hosts"][host]["r"]
