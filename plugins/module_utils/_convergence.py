# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The convergence ladder of a live migration (issue 19 item 3): when pre-copy does not converge,
take the gentlest lever the operator allowed, each only when the one before was not enough.

1. **Stepwise maximum downtime** (as oVirt and KubeVirt do): the job starts at a low maximum
   downtime (``downtime_start_ms``) and each new memory pass - the previous one did not get the
   remainder under the limit - raises it one step, in ``downtime_steps`` steps up to
   ``max_downtime_ms`` (``virDomainMigrateSetMaxDowntime``). A guest that converges at a short
   pause is never paused longer. ``downtime_steps`` 1 sets ``max_downtime_ms`` at once.
2. **Auto-converge**: QEMU's migration capabilities cannot be switched on during a job, so
   "allowed" means the job started with ``VIR_MIGRATE_AUTO_CONVERGE``; QEMU then throttles the
   vCPUs itself, only while the move does not converge. The ladder records when the throttle
   (``VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE``) first shows, and how far it went.
3. **Post-copy**: once the downtime is at its top and ``stall_iterations`` more passes did not end the
   move (counted from the throttle's start when auto-converge is allowed and throttling), and only
   with ``postcopy`` (the job started with ``VIR_MIGRATE_POSTCOPY``) and ``postcopy_on_stall``:
   ``virDomainMigrateStartPostCopy``. Post-copy moves memory only: never while disks are copied.

:class:`Ladder` is pure (fed the waiter's progress samples, :func:`_migration_monitor.progress_from_stats`);
:func:`drive` makes its libvirt calls. The steps taken are kept with the elapsed time and the
memory pass of each, for the migrate result and the summary (:func:`describe`).
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

#: the first maximum downtime of a stepwise ladder (ms)
DEFAULT_START_MS = 100


def downtime_steps(start_ms: int, max_ms: int | None, steps: int) -> list[int]:
    """The maximum downtimes (ms) of the ladder: ``steps`` values evenly from ``start_ms`` to
    ``max_ms``; ``[max_ms]`` for one step or when ``max_ms <= start_ms``; ``[]`` without
    ``max_ms`` (QEMU keeps its default).

    >>> downtime_steps(100, 500, 3)
    [100, 300, 500]
    >>> downtime_steps(100, 80, 4)
    [80]
    """
    if not max_ms:
        return []
    if steps <= 1 or max_ms <= start_ms:
        return [int(max_ms)]
    return [int(round(start_ms + (max_ms - start_ms) * i / float(steps - 1))) for i in range(steps)]


@dataclasses.dataclass
class LadderOptions:
    """What the operator allowed: ``max_downtime_ms`` (None: QEMU's default, no downtime steps),
    ``downtime_steps`` and ``downtime_start_ms`` (ms), ``auto_converge`` (the job has
    ``VIR_MIGRATE_AUTO_CONVERGE``), ``postcopy`` (post-copy when the ladder is exhausted: the job
    has ``VIR_MIGRATE_POSTCOPY`` and the operator asked for it), ``stall_iterations`` (memory passes at
    the top of the ladder before post-copy)."""

    max_downtime_ms: int | None = None
    downtime_steps: int = 1
    downtime_start_ms: int = DEFAULT_START_MS
    auto_converge: bool = False
    postcopy: bool = False
    stall_iterations: int = 3


class Ladder:
    """The ladder's decisions, one progress sample at a time (pure).

    :meth:`observe` returns the actions to take now: ``("set_downtime", ms)`` or
    ``("postcopy", None)``; ``steps`` is every step taken so far: ``{step: downtime |
    auto_converge | postcopy, at_s, memory_iteration, max_downtime_ms | throttle_percent,
    throttle_max_percent}`` (a step whose libvirt call failed gets ``applied: False``).
    """

    def __init__(self, opts: LadderOptions) -> None:
        self.opts = opts
        self.values = downtime_steps(opts.downtime_start_ms, opts.max_downtime_ms, opts.downtime_steps)
        self.index = -1
        self.steps: list[dict[str, t.Any]] = []
        self.last_iteration = 0
        #: the memory pass at which the downtime reached its top (or the first pass without steps)
        self.top_iteration: int | None = None
        self.throttle_iteration: int | None = None
        self.postcopy_requested = False
        self.reason: str | None = None

    def _take(self, step: str, sample: dict[str, t.Any], **values: t.Any) -> dict[str, t.Any]:
        entry = {"step": step, "at_s": sample.get("elapsed_s"), "memory_iteration": sample.get("memory_iteration")}
        entry.update(values)
        self.steps.append(entry)
        return entry

    def observe(self, sample: dict[str, t.Any]) -> list[tuple[str, t.Any]]:
        """Take one progress sample; return the actions (see the class docstring)."""
        actions: list[tuple[str, t.Any]] = []
        if not sample.get("active") or self.postcopy_requested:
            return actions
        iteration = int(sample.get("memory_iteration") or 0)
        if self.index < 0 and self.values:
            self.index = 0
            self._take("downtime", sample, max_downtime_ms=self.values[0])
            actions.append(("set_downtime", self.values[0]))
        elif sample.get("phase") == "memory" and iteration >= 2 and iteration > self.last_iteration \
                and 0 <= self.index < len(self.values) - 1:
            # a new pass: the last one did not get the remainder under the limit
            self.index += 1
            self._take("downtime", sample, max_downtime_ms=self.values[self.index])
            actions.append(("set_downtime", self.values[self.index]))
        if sample.get("phase") == "memory" and iteration >= 1:
            self.last_iteration = max(self.last_iteration, iteration)
            if self.top_iteration is None and self.index >= len(self.values) - 1:
                self.top_iteration = iteration
        throttle = sample.get("auto_converge_throttle")
        if self.opts.auto_converge and throttle:
            taken = [s for s in self.steps if s["step"] == "auto_converge"]
            if taken:
                taken[0]["throttle_max_percent"] = max(int(taken[0]["throttle_max_percent"]), int(throttle))
            else:
                self.throttle_iteration = iteration
                self._take("auto_converge", sample, throttle_percent=int(throttle), throttle_max_percent=int(throttle))
        if self.opts.postcopy and sample.get("phase") == "memory" and self.top_iteration is not None:
            base = self.top_iteration
            if self.opts.auto_converge and self.throttle_iteration is not None:
                base = max(base, self.throttle_iteration)
            if iteration >= base + max(1, int(self.opts.stall_iterations)):
                self.postcopy_requested = True
                self.reason = ("the ladder is exhausted (%s) and memory pass %d still did not converge: "
                               "switched to post-copy" % (self._exhausted_words(), iteration))
                self._take("postcopy", sample)
                actions.append(("postcopy", None))
        return actions

    def _exhausted_words(self) -> str:
        words = ["max downtime %d ms" % self.values[-1]] if self.values else ["QEMU's default max downtime"]
        if self.opts.auto_converge:
            words.append("auto-converge %s" % ("throttling" if self.throttle_iteration is not None else "allowed"))
        return ", ".join(words)

    def as_result(self) -> dict[str, t.Any]:
        """``{allowed: {downtime_steps_ms: [ms], auto_converge, postcopy, stall_iterations}, steps:
        [...], msg}``: what the operator allowed, the steps taken (see the class docstring),
        and :func:`describe` of them."""
        return {"allowed": {"downtime_steps_ms": list(self.values), "auto_converge": bool(self.opts.auto_converge),
                            "postcopy": bool(self.opts.postcopy), "stall_iterations": int(self.opts.stall_iterations)},
                "steps": [dict(s) for s in self.steps], "msg": describe(self.steps)}


def describe(steps: t.Sequence[dict[str, t.Any]]) -> str:
    """The steps taken in words, for the summary: e.g. ``max downtime 100 ms at 0.0 s, 300 ms at
    8.2 s (pass 2); auto-converge throttling 20 % at 14.1 s (pass 4), up to 40 %; post-copy at 20.0 s
    (pass 7)``; ``no step taken`` for none."""
    def when(s: dict[str, t.Any]) -> str:
        text = "at %s s" % s.get("at_s")
        if s.get("memory_iteration"):
            text += " (pass %s)" % s["memory_iteration"]
        if s.get("applied") is False:
            text += " (refused by libvirt)"
        return text
    parts = []
    downs = [s for s in steps if s["step"] == "downtime"]
    if downs:
        parts.append("max downtime " + ", ".join("%s ms %s" % (s["max_downtime_ms"], when(s)) for s in downs))
    for s in steps:
        if s["step"] == "auto_converge":
            parts.append("auto-converge throttling %s %% %s, up to %s %%" % (s["throttle_percent"], when(s),
                                                                             s["throttle_max_percent"]))
        elif s["step"] == "postcopy":
            parts.append("post-copy %s" % when(s))
    return "; ".join(parts) if parts else "no step taken"


def options_for(opts: t.Any, plan: t.Any) -> LadderOptions:
    """The ladder a move may climb: from its options (``_migration_plan.MigrationOptions``) and
    plan (``MigrationPlan``: its ``max_downtime_ms`` is None for an offline move, and only the
    flags it sets are allowed levers)."""
    names = set(getattr(plan, "flag_names", None) or [])
    return LadderOptions(max_downtime_ms=plan.max_downtime_ms, downtime_steps=int(opts.downtime_steps or 1),
                         downtime_start_ms=int(opts.downtime_start_ms or DEFAULT_START_MS),
                         auto_converge="VIR_MIGRATE_AUTO_CONVERGE" in names,
                         postcopy=bool(opts.postcopy_on_stall) and "VIR_MIGRATE_POSTCOPY" in names,
                         stall_iterations=int(opts.stall_iterations or 3))


def drive(ladder: Ladder, dom: t.Any, sample: dict[str, t.Any], notes: list[str],
          log: t.Callable[[str], None], lv: t.Any) -> bool:
    """Feed ``sample`` to ``ladder`` and make its calls on the source domain ``dom``:
    ``virDomainMigrateSetMaxDowntime(ms, 0)`` and ``virDomainMigrateStartPostCopy(0)``. A libvirt
    error becomes a note and marks the step ``applied: False`` (the move goes on under its
    completion timeout); other errors propagate.

    :returns: True when post-copy was started.
    """
    started = False
    for action, value in ladder.observe(sample):
        step = ladder.steps[-1]
        try:
            if action == "set_downtime":
                dom.migrateSetMaxDowntime(int(value), 0)
            elif action == "postcopy":
                log("kvmops.migration: %s" % ladder.reason)
                dom.migrateStartPostCopy(0)
                started = True
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            step["applied"] = False
            if action == "set_downtime":
                notes.append("max_downtime_ms not applied: %s" % _libvirt.libvirt_error_detail(err))
            else:
                notes.append("post-copy refused at the end of the ladder (%s): the move goes on in pre-copy"
                             % _libvirt.libvirt_error_detail(err))
    return started
