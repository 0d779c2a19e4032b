# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action of ``kvmops.migration.migration_wait``: poll an async ``migrate`` job on its host,
print its progress file's latest sample while it runs, and return the module's result."""

from __future__ import annotations

import json
import shlex
import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()
MIB = 1024 ** 2


def progress_line(label, sample):
    """One line for a person from a progress sample of the migrate module."""
    remaining = sample.get("data_remaining_bytes")
    total = sample.get("data_total_bytes")
    percent = sample.get("percent")
    parts = ["%s: %s" % (label, sample.get("phase") or "?")]
    parts.append("%5.1f%%" % percent if isinstance(percent, (int, float)) else "  ?  %")
    if remaining is not None:
        parts.append("%.1f MiB remaining" % (remaining / MIB))
    if total:
        parts.append("of %.1f MiB" % (total / MIB))
    if sample.get("memory_iteration"):
        parts.append("pass %s" % sample["memory_iteration"])
    if sample.get("dirty_rate_bytes_per_s"):
        parts.append("dirty %.1f MiB/s" % (sample["dirty_rate_bytes_per_s"] / MIB))
    if sample.get("elapsed_s") is not None:
        parts.append("(%ss)" % sample["elapsed_s"])
    return " ".join(parts)


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


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("jid", "progress_file", "poll_interval_s", "timeout_s", "label", "cleanup"))
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
        ))
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        host = self._task.delegate_to or task_vars.get("inventory_hostname")
        label = "%s [%s]" % (args["label"], host)
        start = time.monotonic()
        shown = None
        samples = 0

        def show_progress():
            """Print the progress file's latest sample when it is new; returns it."""
            if not args["progress_file"]:
                return shown
            res = self._low_level_execute_command(
                "tail -n 3 %s 2>/dev/null || true" % shlex.quote(args["progress_file"]), sudoable=True)
            sample = last_sample(res.get("stdout"))
            if sample is not None and sample != shown:
                display.display(progress_line(label, sample))
                return sample
            return shown

        while True:
            status = self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                          module_args={"jid": args["jid"], "_async_dir": async_dir})
            if status.get("failed") and not status.get("started", True):
                raise AnsibleActionFail("async job %s is unknown on %s: %s" % (
                    args["jid"], host, status.get("msg")))
            latest = show_progress()  # also once after the end: a short move still shows its last sample
            if latest is not shown:
                samples += 1
                shown = latest
            if status.get("finished"):
                break
            if time.monotonic() - start > args["timeout_s"]:
                raise AnsibleActionFail(
                    "Gave up waiting for %s after %d s: the migration job %s may still run on %s "
                    "(check 'virsh domjobinfo' there)." % (args["label"], args["timeout_s"], args["jid"], host))
            time.sleep(max(0.5, args["poll_interval_s"]))
        for key in ("ansible_job_id", "started", "finished", "results_file", "stdout", "stderr",
                    "stdout_lines", "stderr_lines", "invocation"):
            status.pop(key, None)
        if args["cleanup"]:
            self._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                 module_args={"jid": args["jid"], "mode": "cleanup", "_async_dir": async_dir})
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
        result["waited_s"] = round(time.monotonic() - start, 1)
        return result


def _no_result(status: dict) -> bool:
    """True when async_status reports a job whose module printed no JSON result."""
    text = "%s %s" % (status.get("msg") or "", status.get("module_stderr") or "")
    no_data = "data" in status and not status.get("data")
    return "No start of json char found" in text or (no_data and "Traceback" in text)
