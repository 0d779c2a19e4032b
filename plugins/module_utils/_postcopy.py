# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Post-copy without losing the guest: a post-copy move whose link broke, told from the domain
state; waiting for it to end, and the operator's way to resume it (``VIR_MIGRATE_POSTCOPY_RESUME``).

Once a move has switched to post-copy, the destination runs the guest and the source holds the
memory pages not sent yet: neither copy alone is the guest. When the link breaks then, libvirt
(8.5 and newer) keeps both domains and marks them ``post-copy failed``; nothing may be destroyed
or undefined on either host, and the move is finished by calling ``virDomainMigrate3`` again with
the original flags and parameters plus ``VIR_MIGRATE_POSTCOPY_RESUME`` once the link is back
(``virsh migrate ... --postcopy-resume``).

What libvirt 11.3 with QEMU 10.0 did in the lab (``virsh migrate --postcopy`` and a link
silently dropping every packet, tests/integration/test_postcopy_link.py): the source domain
went from ``paused (post-copy)`` to ``paused (post-copy failed)`` when its libvirt connection to
the destination died (keepalive, about 30 s), the destination stayed ``running (post-copy)``,
and QEMU's own data connection, only silent, was not broken: after the repair TCP carried on and
the move completed by itself, while a resume was refused ("QEMU reports migration is still
running"). With the stream broken, every resume crashed the destination's libvirtd: libvirt
11.3.0-3+deb13u3 with QEMU 10.0.13 (Debian 13), 5 runs of 5 over two sessions, with the stream
broken by ``ss -K`` on the source or by ``virsh domjobabort --postcopy`` (QEMU
``postcopy-paused`` on both sides, libvirt ``paused (post-copy failed)`` on the source and
``running (post-copy failed)`` on the destination), with and without ``--tls``, with and
without ``--p2p`` and ``--listen-address``. The resume (``virsh migrate --live --persistent
--undefinesource --copy-storage-all --postcopy [--tls] --postcopy-resume NAME
qemu+ssh://root@DEST/system --migrateuri tcp://DEST ...``, the original's flags and parameters)
failed within 0.4 s with "End of file while reading data" and systemd logged
``libvirtd.service: Main process exited, code=killed, status=11/SEGV``. The destination's last
debug lines were ``qemuMigrationDstPrepareResume ... flags=0x98059`` and QEMU's
``postcopy-paused``; gdb on that daemon showed the crashing thread in
``qemuProcessIncomingDefNew`` (``mov 0x0(%r13),%esi`` with r13 = 0, the read of the data
connection's fd just before ``qemuMigrationDstGetURI``) called from
``qemuMigrationDstPrepareDirect`` and ``virDomainMigratePrepare3Params``: the Prepare phase of
every resume, whatever broke the stream. The restarted daemon refused any further resume ("domain
... is not processing incoming migration"), or the resume call hung. So this module waits for the
move to end by itself (:func:`wait_for_end`), never breaks the stream, and leaves the resume to
the operator (:func:`paused_message`); trixie-backports has libvirt 12.9, not tried.

libvirt API: ``virDomainGetState``. See https://libvirt.org/migration.html#post-copy.
"""

from __future__ import annotations

import dataclasses
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

#: the ``--flag`` of ``virsh migrate`` for each ``VIR_MIGRATE_*`` flag name of a plan
VIRSH_FLAGS = {
    "VIR_MIGRATE_LIVE": "--live", "VIR_MIGRATE_PEER2PEER": "--p2p", "VIR_MIGRATE_PERSIST_DEST": "--persistent",
    "VIR_MIGRATE_UNDEFINE_SOURCE": "--undefinesource", "VIR_MIGRATE_NON_SHARED_DISK": "--copy-storage-all",
    "VIR_MIGRATE_NON_SHARED_INC": "--copy-storage-inc", "VIR_MIGRATE_AUTO_CONVERGE": "--auto-converge",
    "VIR_MIGRATE_COMPRESSED": "--compressed", "VIR_MIGRATE_PARALLEL": "--parallel",
    "VIR_MIGRATE_POSTCOPY": "--postcopy", "VIR_MIGRATE_TLS": "--tls", "VIR_MIGRATE_UNSAFE": "--unsafe",
}

#: seconds of the first wait between two recovery attempts, and the longest one (doubling)
BACKOFF_FIRST_S = 2.0
BACKOFF_MAX_S = 15.0


#: ``(state, reason)`` of ``virDomainGetState`` in post-copy: libvirt's enum values (a stable
#: ABI, so that readers without the binding's constants, e.g. host facts, tell them too):
#: ``VIR_DOMAIN_PAUSED_POSTCOPY`` 12 (the source while post-copy runs),
#: ``VIR_DOMAIN_PAUSED_POSTCOPY_FAILED`` 13, ``VIR_DOMAIN_RUNNING_POSTCOPY`` 10 (the destination
#: while post-copy runs), ``VIR_DOMAIN_RUNNING_POSTCOPY_FAILED`` 11 (libvirt 8.5)
PHASES = {("paused", 12): "active", ("paused", 13): "failed", ("running", 10): "active", ("running", 11): "failed"}
#: the :func:`source_phase` of a source whose move is in post-copy
IN_POSTCOPY = ("failed", "active")
#: which side of the move each of them is on (a paused failed domain may be either)
SIDES = {("paused", 12): "source", ("running", 10): "destination", ("running", 11): "destination"}


def phase(state: str | None, reason: int | None) -> str | None:
    """What a domain state says about post-copy (:data:`PHASES`).

    :param state: :func:`_libvirt.state_name` of ``virDomainGetState``; ``reason`` its reason.
    :returns: ``failed`` (the link broke: the guest waits to be resumed, memory split between
        the hosts), ``active`` (post-copy runs), else None.
    """
    return PHASES.get((str(state), int(reason or 0)))


def in_postcopy(info: dict[str, t.Any] | None, lv: t.Any = None) -> str | None:
    """:func:`phase` of a domain summary (``{state, reason}``, :func:`_migration.describe`), None
    for None."""
    if not info:
        return None
    return phase(info.get("state"), info.get("reason"))


def backoff(first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S) -> t.Iterator[float]:
    """Seconds to wait before each next attempt: ``first_s``, doubling, at most ``max_s``."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


#: the ``virsh migrate`` option of each typed migration parameter the resume must repeat
#: (``VIR_MIGRATE_PARAM_*`` names; lists joined with commas); the XML parameters are left out
VIRSH_PARAMS = {
    "migrate_disks": "--migrate-disks", "migrate_disks_detect_zeroes": "--migrate-disks-detect-zeroes",
    "disks_uri": "--disks-uri", "bandwidth": "--bandwidth", "bandwidth.postcopy": "--postcopy-bandwidth",
    "listen_address": "--listen-address", "tls.destination": "--tls-destination",
    "parallel.connections": "--parallel-connections",
}


def resume_command(name: str, dest_uri: str, flag_names: t.Iterable[str], migrate_uri: str | None,
                   params: dict[str, t.Any] | None = None) -> str:
    """The ``virsh migrate`` command (run on the source) that resumes this move by hand: the
    plan's flags (:data:`VIRSH_FLAGS`), ``--postcopy-resume``, the data URI and the plan's typed
    parameters that virsh has an option for (:data:`VIRSH_PARAMS`: disks, their URI, bandwidths,
    listen address, TLS name), as the resume must repeat the original call."""
    words = ["virsh", "migrate"] + [VIRSH_FLAGS[n] for n in flag_names if n in VIRSH_FLAGS]
    if "--postcopy" not in words:
        words.append("--postcopy")
    words += ["--postcopy-resume", name, dest_uri]
    if migrate_uri:
        words += ["--migrateuri", migrate_uri]
    for key, option in VIRSH_PARAMS.items():
        value = (params or {}).get(key)
        if value is None or value == [] or value == "":
            continue
        words += [option, ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)]
    return " ".join(words)


def paused_message(name: str, source: str, dest: str, command: str, waited_s: float | None, seen: str | None) -> str:
    """The operator's sentence for a move left in post-copy after its link broke: where the guest
    is, that it is not lost, that nothing may be removed, and the fixes (wait or rerun; the
    ``virsh`` resume ``command`` when the source stays ``paused (post-copy failed)``).

    :param waited_s: seconds waited (``postcopy_recover_timeout_s``); ``seen``: the source's last
        :func:`source_phase`."""
    waited = " and did not end within %d s (postcopy_recover_timeout_s)" % waited_s if waited_s is not None else ""
    return ("Guest %s is paused in post-copy between %s and %s: the link broke after the switch to post-copy%s "
            "(the source's domain is %s). The guest is NOT lost: it runs on %s and waits there for the memory "
            "pages still on %s, so nothing was removed on either host and nothing may be: never destroy or "
            "undefine %s on %s or %s. Restore the link: QEMU's stream usually carries on and the move then "
            "completes by itself (rerun the playbook to wait for it again). If the source still shows "
            "'paused (post-copy failed)' with the link back ('virsh domstate --reason %s' there), resume the move on "
            "%s with: %s. Caution: with libvirt 11.3 (Debian 13's 11.3.0-3+deb13u3) that resume crashed the "
            "destination's libvirtd in every lab run and left the guest impossible to resume through libvirt; "
            "with that release, upgrade libvirt on both hosts first (Debian 13: trixie-backports) and keep both "
            "domains as they are until then"
            % (name, source, dest, waited, {"failed": "post-copy failed", "active": "still in post-copy"}.get(
                str(seen), str(seen or "unknown")), dest, source, name, source, dest, name, source, command))


@dataclasses.dataclass
class Outcome:
    """The outcome of :func:`wait_for_end`: ``state`` ``completed`` (the source domain is gone: the
    move finished once the link was back) or ``paused`` (still in post-copy at the deadline);
    ``paused_s`` seconds from the failure until the move finished (None while paused);
    ``waited_s`` seconds waited; ``seen`` each source phase seen, in order."""

    state: str
    paused_s: float | None
    waited_s: float
    seen: list[str]

    def as_result(self) -> dict[str, t.Any]:
        return {"state": self.state, "paused_s": None if self.paused_s is None else round(self.paused_s, 1),
                "waited_s": round(self.waited_s, 1), "seen": list(self.seen)}


def source_phase(dom: t.Any, lv: t.Any) -> str:
    """Where the source domain of a post-copy move is: ``gone`` (undefined or shut off: the move
    completed), :func:`phase` (``failed``/``active``), ``other`` (another state), or ``unknown``
    when libvirt cannot say (``virDomainGetState``)."""
    try:
        state, reason = dom.state()
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        code = err.get_error_code() if hasattr(err, "get_error_code") else None
        return "gone" if code == _libvirt.const(lv, "VIR_ERR_NO_DOMAIN") else "unknown"
    name = _libvirt.state_name(lv, state)
    if name == "shutoff":
        return "gone"
    return phase(name, reason) or "other"


def wait_for_end(dom: t.Any, *, timeout_s: float, clock: t.Callable[[], float], sleep: t.Callable[[float], None],
                 lv: t.Any, log: t.Callable[[str], None] = lambda msg: None,
                 failed_at: float | None = None) -> Outcome:
    """Wait up to ``timeout_s`` for a post-copy move whose link broke to end by itself, reading
    the source domain ``dom`` (:func:`source_phase`) with :func:`backoff` between the reads.

    Changes nothing: no abort, destroy, undefine, closed connection or resume. In the lab
    (libvirt 11.3, QEMU 10.0) a silently cut link left QEMU's stream stalled, not broken, and it
    carried on and completed the move once the link was back; a ``VIR_MIGRATE_POSTCOPY_RESUME``
    there crashed the destination's libvirtd (SIGSEGV in the Prepare phase of the resume, see the
    module's docstring) in five runs of five, however the stream had been broken, after which the
    incoming side could not be resumed at all ("not processing incoming migration"). So the
    resume is left to the operator (:func:`paused_message`).

    :param failed_at: ``clock()`` when the failure was seen (default: now), for ``paused_s``.
    """
    start = clock()
    failed_at = start if failed_at is None else failed_at
    seen: list[str] = []
    delays = backoff()
    while True:
        where = source_phase(dom, lv)
        if not seen or seen[-1] != where:
            seen.append(where)
            log("kvmops.migration: post-copy move: the source domain is %s" % where)
        now = clock()
        if where == "gone":
            return Outcome("completed", now - failed_at, now - start, seen)
        if now - start >= timeout_s:
            return Outcome("paused", None, now - start, seen)
        sleep(min(next(delays), max(0.1, timeout_s - (now - start))))
