# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of ``kvmops.migration.migration_wait``: wait for an async ``migrate`` job on its host
(one remote command per poll that waits there for the job's end), print its progress file's
latest sample while it runs, and return the module's result."""

from __future__ import annotations

import json
import shlex
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.kvmops.migration.plugins.module_utils._migration_monitor import progress_text

display = Display()


def progress_line(label, sample):
    """One line for a person from a progress sample of the migrate module
    (:func:`_migration_monitor.progress_text`, the one wording of progress)."""
    return "%s: %s" % (label, progress_text(sample))


def last_sample(text):
    """The last complete JSON line of a progress file's tail, or None."""
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


#: seconds between two looks at the job's result file on the host while a poll waits there
LOOK_EVERY_S = 0.1

#: One poll, run by the host's shell (POSIX sh): wait there until the async job's result file no
#: longer holds async_wrapper's "started" record (the job has ended) or ``steps`` looks have
#: passed, then print the job's state and the progress file's tail. async_wrapper writes each
#: record to a temporary file and renames it, so a record is read whole or not at all.
WAIT_SCRIPT = """f=%(job)s; p=%(progress)s; n=%(steps)d
ended() { case "$(head -c 11 "$f" 2>/dev/null)" in '{"started":'|'') return 1;; esac; return 0; }
state=missing; [ -e "$f" ] && state=running
while [ "$state" = running ] && [ "$n" -gt 0 ]; do
  ended && { state=ended; break; }
  sleep %(look)s 2>/dev/null || sleep 1
  n=$((n-1))
done
[ "$state" = running ] && ended && state=ended
echo "kvmops-job: $state"
[ -n "$p" ] && tail -n 3 "$p" 2>/dev/null
true"""


def wait_command(job_file: str, progress_file: str | None, wait_s: float) -> str:
    """The shell command of one poll: waits on the host up to ``wait_s`` seconds (looking every
    :data:`LOOK_EVERY_S`) for the job to end; see :data:`WAIT_SCRIPT` and :func:`parse_poll`."""
    return WAIT_SCRIPT % {"job": shlex.quote(job_file), "progress": shlex.quote(progress_file or ""),
                          "steps": max(1, int(round(wait_s / LOOK_EVERY_S))), "look": LOOK_EVERY_S}


def parse_poll(stdout: str) -> tuple[str, dict | None]:
    """(state, latest progress sample) from one poll's output: state is ``running``, ``ended``
    (the result file holds the module's result) or ``missing`` (no such job on the host);
    ``unknown`` when the output has no state line (the command itself failed)."""
    state = "unknown"
    rest: list[str] = []
    for line in (stdout or "").splitlines():
        if line.startswith("kvmops-job: ") and state == "unknown":
            state = line.split(": ", 1)[1].strip()
        else:
            rest.append(line)
    return state, last_sample("\n".join(rest))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jid", "progress_file", "poll_interval_s", "timeout_s", "label", "cleanup",
                             "remove_progress_file"))
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        dummy, args = self.validate_argument_spec(argument_spec=dict(
            jid=dict(type="str", required=True),
            progress_file=dict(type="str"),
            poll_interval_s=dict(type="float", default=5.0),
            timeout_s=dict(type="float", default=86400.0),
            label=dict(type="str", default="migration"),
            cleanup=dict(type="bool", default=True),
            remove_progress_file=dict(type="bool", default=False),
        ))
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        job_file = async_dir.rstrip("/") + "/" + args["jid"]
        host = self._task.delegate_to or task_vars.get("inventory_hostname")
        label = "%s [%s]" % (args["label"], host)
        start = time.monotonic()
        shown = None
        samples = 0
        polls = 0
        while True:
            # one remote command per poll, which waits on the host for the job's end: the end is
            # seen within LOOK_EVERY_S (plus one round trip), and the latest progress comes along
            left = args["timeout_s"] - (time.monotonic() - start)
            res = self._low_level_execute_command(
                wait_command(job_file, args["progress_file"], max(LOOK_EVERY_S, min(args["poll_interval_s"], left))),
                sudoable=True)
            polls += 1
            state, sample = parse_poll(res.get("stdout"))
            if sample is not None and sample != shown:
                display.display(progress_line(label, sample))
                shown = sample
                samples += 1
            if state == "missing":
                raise AnsibleActionFail("async job %s is unknown on %s: no %s there (removed, or another "
                                        "async_dir)." % (args["jid"], host, job_file))
            if state == "unknown":
                raise AnsibleActionFail("Could not read the state of async job %s on %s: %s" % (
                    args["jid"], host, (res.get("stderr") or res.get("stdout") or "no output").strip()[:500]))
            if state == "ended":
                # the module's result, as ansible-core reads it (warnings, errors, no_log)
                status = self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                              module_args={"jid": args["jid"], "_async_dir": async_dir})
                break
            if time.monotonic() - start >= args["timeout_s"]:
                raise AnsibleActionFail(
                    "Gave up waiting for %s after %d s: the migration job %s may still run on %s "
                    "(check 'virsh domjobinfo' there)." % (args["label"], args["timeout_s"], args["jid"], host))
        for key in ("ansible_job_id", "started", "finished", "results_file", "stdout", "stderr",
                    "stdout_lines", "stderr_lines", "invocation"):
            status.pop(key, None)
        remove = ([job_file] if args["cleanup"] else []) + (
            [args["progress_file"]] if args["remove_progress_file"] and args["progress_file"] else [])
        if remove:
            self._low_level_execute_command("rm -f -- %s" % " ".join(shlex.quote(p) for p in remove), sudoable=True)
        if status.get("failed") and _no_result(status):
            # async_wrapper found no JSON: the module process died (killed, or crashed in libvirt)
            status["detail"] = status.get("msg")
            status["msg"] = (
                "The migrate module on %s ended after %d s without a result: its process was killed or "
                "crashed. The last progress seen is above. Check where %s runs ('virsh list --all' on "
                "both hosts) and 'virsh domjobinfo %s' on %s before running again." % (
                    host, time.monotonic() - start, args["label"], args["label"], host))
        result.update(status)
        result["progress_samples"] = samples
        result["polls"] = polls
        result["waited_s"] = round(time.monotonic() - start, 1)
        return result


def _no_result(status: dict) -> bool:
    """True when async_status reports a job whose module printed no JSON result."""
    text = "%s %s" % (status.get("msg") or "", status.get("module_stderr") or "")
    no_data = "data" in status and not status.get("data")
    return "No start of json char found" in text or (no_data and "Traceback" in text)
