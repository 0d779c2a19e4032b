"""Issue 21 item 2, lab part: the main job as AWX runs it, and issue 18's pin of the remote calls.

AWX and automation controller run a job template through ansible-runner: a private data
directory with the inventory (``inventory/``) and the survey's answers as extra variables
(``env/extravars``), the project checkout as the working directory, the project's collections
found through ``ANSIBLE_COLLECTIONS_PATH`` (what a project sync of ``collections/requirements.yml``
gives the job). Runner turns everything the playbook prints into job events
(``artifacts/<ident>/job_events/*.json``), and ``set_stats`` into the ``artifact_data`` of the
final ``playbook_on_stats`` event, which a workflow's next node receives as extra variables.

One job moves migratetest2 hosta -> hostb at verbosity 3 (a template's "Verbosity: 3 (Debug)"),
which also shows every remote command as an ``SSH: EXEC`` line: they are counted with
tests/bench/bench.py's :func:`remote_commands` and pinned (issue 18: the count per move must not
creep back). ``guest_on_hosta`` puts the guest back on hosta afterwards.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

import ansible_runner

from conftest import INVENTORY, ROOT, lab

sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
from bench import remote_commands  # noqa: E402  (tests/bench/bench.py, the one counter of make bench)

GUEST = lab.GUEST
IDENT = "migrate"
#: the survey of the job template "Migrate a KVM guest" (docs/awx/configure_controller.yml):
#: guest, destination, bandwidth in MiB/s (a limit that makes the move last a few polls, so that
#: progress is shown, as test_roles does), timeout in s
SURVEY = {"vm": GUEST, "dest": "hostb", "bandwidth": 32, "timeout": 300}

#: Remote commands (``SSH: EXEC``) of the move outside the migration job, that is before it
#: starts and after it ended, at most: 14. Measured on 2026-12-03 with this test's job
#: (migratetest2 hosta -> hostb, TLS, bandwidth 32 MiB/s): 25 in all, 9 of them while the job ran
#: (6 polls), 16 outside; two less since 2026-12-04: the verification no longer reads the source
#: (the migrate module returns its source_after) and the probes' markers are removed by the
#: listener itself once every port was probed (the pre-flight's probe_ended). The commands
#: during the job depend on its length: they are bounded by the polls the wait reports
#: (:data:`WAIT_EXTRA`).
MAX_OUTSIDE_JOB = 14
#: migration_wait's commands besides one per poll: the async directory's ``~`` expanded on the
#: host, async_status once the job has ended, and the removal of the job's files
WAIT_EXTRA = 3


def _run_job(tmp_path) -> ansible_runner.Runner:
    pdd = tmp_path / "runner"
    (pdd / "inventory").mkdir(parents=True)
    with open(INVENTORY) as src, open(pdd / "inventory" / "hosts.yml", "w") as dst:
        dst.write(src.read())
    return ansible_runner.run(
        private_data_dir=str(pdd), project_dir=ROOT, playbook="playbooks/migrate.yml",
        inventory=str(pdd / "inventory"), extravars=SURVEY, ident=IDENT, verbosity=3, quiet=True,
        envvars={"ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".cache", "collections"),
                 "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        settings={"job_timeout": 900})


def _task_events(events: list[dict], task: str, event: str = "runner_on_ok") -> list[dict]:
    return [e for e in events if e.get("event") == event and task in (e.get("event_data", {}).get("task") or "")]


def test_migrate_job_through_ansible_runner(guest_on_hosta, tmp_path):
    r = _run_job(tmp_path)
    stdout = r.stdout.read()
    assert (r.status, r.rc) == ("successful", 0), stdout[-6000:]
    assert lab.domain_hosts(GUEST) == {"hostb": "running"}
    events = list(r.events)

    # progress of the move: migration_wait's lines (display output: runner's "verbose" events)
    progress = [e for e in events if re.search(r"%s \[hosta\]: (storage|memory|setup)\s+[\d.]+%%" % GUEST,
                                               e.get("stdout") or "")]
    assert progress, "no job event carries a progress line:\n%s" % stdout[-6000:]
    print("progress lines in events of type %s" % sorted({e["event"] for e in progress}))
    # the summary: the debug task's runner_on_ok event, its lines in the result and in the event's stdout
    summary = _task_events(events, "Summary of the migration of %s" % GUEST)
    assert len(summary) == 1, [e.get("event_data", {}).get("task") for e in events]
    lines = summary[0]["event_data"]["res"]["msg"]
    assert re.match(r"%s moved hosta -> hostb in (at least )?[\d.]+ s, downtime (about )?\d+ ms\.$" % GUEST,
                    lines[0]), lines
    assert any(line.startswith("moved: memory ") for line in lines), lines
    assert "downtime" in summary[0]["stdout"] and "moved: memory" in summary[0]["stdout"]

    # set_stats: the artifact_data of the last event, as a workflow receives it, in the artifacts
    stats = []
    for path in glob.glob(os.path.join(r.config.artifact_dir, "job_events", "*.json")):
        with open(path) as f:
            event = json.load(f)
        if event.get("event") == "playbook_on_stats":
            stats.append(event["event_data"])
    assert len(stats) == 1, stats
    stats = stats[0]
    assert stats["failures"] == {} and stats["dark"] == {}
    moved = stats["artifact_data"]["kvmops_migrations"][GUEST]
    assert (moved["ok"], moved["state"], moved["from"], moved["to"]) == (True, "migrated", "hosta", "hostb")
    assert isinstance(moved["downtime_ms"], int) and moved["downtime_ms"] >= 0
    assert moved["memory_bytes"] > 0 and moved["disk_bytes"] > 0
    assert sorted(moved["images_created"]) == ["/var/lib/libvirt/images/%s.%s" % (GUEST, ext) for ext in ("raw", "swap")]
    assert "lines" not in moved

    # issue 18: the remote commands of this move
    count = remote_commands(stdout)
    wait = _task_events(events, "Wait for the move")
    assert len(wait) == 1
    polls = wait[0]["event_data"]["res"]["polls"]
    print("remote commands: %r, polls of the wait: %d" % (count, polls))
    assert count["outside_job"] <= MAX_OUTSIDE_JOB, count
    assert count["during_job"] <= polls + WAIT_EXTRA, (count, polls)
