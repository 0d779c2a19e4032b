# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the move: is the guest itself healthy on the destination (issue 20)?

A migration that libvirt calls successful can still leave a guest that crashed right after the
switch-over (busy TCG guests oopsed on QEMU 7.2, LAB_NOTES) or whose clock jumped. The migration
driver (:mod:`_migration`) and the cold move (:mod:`_cold_move`) call :func:`check_health` on the
destination domain, over the destination connection they already hold, so the check costs no
extra remote call:

- **State**: the domain must run (or stay paused, when it was paused before the move) for
  ``window_s`` seconds from the switch-over.
- **Panic**: a guest panic, as the guest's panic notifier (pvpanic, ``<panic model='isa'>``,
  Hyper-V crash MSRs) reports it to QEMU, becomes libvirt's ``crashed`` event
  (``VIR_DOMAIN_EVENT_CRASHED``) and, by ``<on_crash>``, the domain's state: crashed (preserve),
  shut off with reason crashed (destroy), or running again (restart). :class:`PanicWatch` records
  the event from before the switch-over (it is registered on the destination connection before
  ``migrate3`` starts); the state with its reason is the fallback when no event loop runs. A
  guest without a panic notifier that reboots itself after a panic cannot be told from a guest
  that keeps running, except through the agent (its channel disconnects).
- **Agent**: where the QEMU guest agent ran on the source before the move (its virtio channel
  ``org.qemu.guest_agent.0`` was ``connected``), ``guest-ping`` must answer within
  ``agent_timeout_s`` on the destination (``virDomainQemuAgentCommand``).
- **Clock**: with an answering agent, the guest's clock is read (``virDomainGetTime``:
  ``guest-get-time``) against this host's, re-synced from the destination's RTC
  (``virDomainSetTime`` with ``VIR_DOMAIN_TIME_SYNC``: the agent runs ``hwclock -s`` or the
  Windows equivalent) unless ``sync_clock`` is false, and read again. The offset is the guest's
  time minus this host's wall clock at the middle of the call, so it includes the hosts' own clock
  difference and half the round trip (a few ms on a LAN).
- **fstrim** (optional, after a storage copy): ``virDomainFSTrim`` through the agent, which gives
  the freed blocks of the copied disks back as holes.

The result is data (:func:`check_health` returns a dict); the caller reports an unhealthy guest
as a failed move, with the guest left where it is (it has moved: nothing is undone).

libvirt API relied on: ``virConnectDomainEventRegisterAny``/``DeregisterAny``
(``VIR_DOMAIN_EVENT_ID_LIFECYCLE``), ``virDomainGetState``, ``virDomainGetXMLDesc``,
``virDomainQemuAgentCommand`` (libvirt_qemu), ``virDomainGetTime``, ``virDomainSetTime``,
``virDomainFSTrim``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils import _args
from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt

#: how often the state and the agent are asked during the watch, in seconds
POLL_S = 0.2
#: how long one ``guest-ping`` may take before it is asked again, in seconds
PING_TIMEOUT_S = 1


@dataclasses.dataclass
class HealthOptions:
    """The ``health`` option of ``migrate`` and ``cold_move`` (``_args``' ``health`` spec).

    ``window_s``: seconds from the switch-over during which the domain must keep running (0: one
    look); ``agent_timeout_s``: seconds from the switch-over within which an agent that ran
    before must answer ``guest-ping``; ``sync_clock``: re-sync the guest's clock through the
    agent; ``fstrim``: trim the guest's file systems through the agent.
    """

    enabled: bool = _args.spec_field("health", "enabled")
    window_s: float = _args.spec_field("health", "window_s")
    agent_timeout_s: float = _args.spec_field("health", "agent_timeout_s")
    sync_clock: bool = _args.spec_field("health", "sync_clock")
    fstrim: bool = _args.spec_field("health", "fstrim")

    @classmethod
    def from_params(cls, params: dict[str, t.Any] | None) -> "HealthOptions":
        """From the module's ``health`` dict (None or missing keys: the defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (params or {}).items() if k in fields and v is not None})


def agent_before(xml: str) -> str | None:
    """The state of the guest agent's channel in a live domain XML: ``connected`` (the agent
    runs in the guest), ``disconnected``, ``unknown`` (a channel without state), or None (no
    channel). The XML is the guest's own (hostile input): :func:`_domain_xml.agent_channel_state`
    reads it with the hardened parser."""
    return _domain_xml.agent_channel_state(xml)


class PanicWatch:
    """Records libvirt's lifecycle events of one domain (by UUID) on one connection, from
    :meth:`start` to :meth:`stop`: a ``crashed`` event (``VIR_DOMAIN_EVENT_CRASHED``, detail
    panicked or crash-loaded) or a stop with reason crashed is a panic.

    Events arrive on libvirt's event loop thread (``_libvirt`` runs it for remote connections);
    with no event loop registration fails and :attr:`error` says why, and :func:`check_health`
    relies on the domain state alone.
    """

    def __init__(self, clock: t.Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.crashes: list[dict[str, t.Any]] = []
        self.error: str | None = None
        self._lock = threading.Lock()
        self._conn: t.Any = None
        self._id: int | None = None
        self._uuid: str | None = None
        self._lv: t.Any = None

    def start(self, conn: t.Any, uuid: str, lv: t.Any) -> "PanicWatch":
        """Register the callback on ``conn`` (``virConnectDomainEventRegisterAny`` for every
        domain, filtered by ``uuid``: the incoming domain does not exist yet). Never raises."""
        self._conn, self._uuid, self._lv = conn, uuid, lv
        event_id = _libvirt.const(lv, "VIR_DOMAIN_EVENT_ID_LIFECYCLE")
        try:
            self._id = conn.domainEventRegisterAny(None, event_id, self._event, None)
        except Exception as err:  # no event loop, an old libvirt, a fake: fall back to the state
            self.error = _libvirt.libvirt_error_detail(err) if _libvirt.is_libvirt_error(err, lv) else str(err)
            self._id = None
        return self

    def _event(self, _conn: t.Any, dom: t.Any, event: int, detail: int, _opaque: t.Any) -> None:
        try:
            uuid = dom.UUIDString()
        except Exception:  # a domain that vanished meanwhile is not ours to judge
            return
        if uuid != self._uuid:
            return
        how = crash_of_event(self._lv, event, detail)
        if how:
            with self._lock:
                self.crashes.append({"at": self.clock(), "how": how})

    def first_crash(self) -> dict[str, t.Any] | None:
        """``{at (clock seconds), how}`` of the first panic event, or None."""
        with self._lock:
            return dict(self.crashes[0]) if self.crashes else None

    def stop(self) -> None:
        """Deregister the callback (``virConnectDomainEventDeregisterAny``). Never raises."""
        if self._id is not None and self._conn is not None:
            try:
                self._conn.domainEventDeregisterAny(self._id)
            except Exception:  # the connection may be gone: nothing left to deregister
                pass
        self._id = None


def crash_of_event(lv: t.Any, event: int, detail: int) -> str | None:
    """What a lifecycle event says about a crash: ``panicked``, ``crashed (crash-loaded)``,
    ``stopped after a crash``, or None."""
    if event == _libvirt.const(lv, "VIR_DOMAIN_EVENT_CRASHED"):
        if detail == _libvirt.const(lv, "VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED"):
            return "crashed (a crash kernel was loaded)"
        return "panicked"
    if (event == _libvirt.const(lv, "VIR_DOMAIN_EVENT_STOPPED")
            and detail == _libvirt.const(lv, "VIR_DOMAIN_EVENT_STOPPED_CRASHED")):
        return "stopped after a crash"
    return None


def crash_of_state(lv: t.Any, state: int, reason: int) -> str | None:
    """What ``virDomainGetState``'s (state, reason) says about a crash: the crashed state, shut
    off with reason crashed (``<on_crash>destroy``), paused with reason crashed (preserve), or
    running with reason crashed; None otherwise."""
    if state == _libvirt.const(lv, "VIR_DOMAIN_CRASHED"):
        return "crashed (libvirt state crashed)"
    pairs = (("VIR_DOMAIN_SHUTOFF", "VIR_DOMAIN_SHUTOFF_CRASHED", "shut off after a crash"),
             ("VIR_DOMAIN_PAUSED", "VIR_DOMAIN_PAUSED_CRASHED", "paused after a crash"),
             ("VIR_DOMAIN_RUNNING", "VIR_DOMAIN_RUNNING_CRASHED", "running in crashed state"))
    for state_name, reason_name, words in pairs:
        if state == _libvirt.const(lv, state_name) and reason == _libvirt.const(lv, reason_name):
            return words
    return None


def _ping(dom: t.Any, lv: t.Any) -> str | None:
    """None when ``guest-ping`` answered, else why not (libvirt's message)."""
    try:
        _libvirt.agent_command(dom, {"execute": "guest-ping"}, PING_TIMEOUT_S, lv)
        return None
    except Exception as err:
        if _libvirt.is_libvirt_error(err, lv):
            return _libvirt.libvirt_error_detail(err)
        raise


def _offset_ms(dom: t.Any, now: t.Callable[[], float]) -> float:
    """Guest time minus this host's wall clock at the middle of ``virDomainGetTime``, in ms."""
    before = now()
    guest = dom.getTime()
    after = now()
    guest_s = int(guest.get("seconds", 0)) + int(guest.get("nseconds", 0)) / 1e9
    return round((guest_s - (before + after) / 2.0) * 1000.0, 1)


def _clock(dom: t.Any, opts: HealthOptions, lv: t.Any, now: t.Callable[[], float]) -> dict[str, t.Any]:
    """``{offset_before_ms, offset_after_ms, synced, note}`` through the agent; failures are
    notes (an agent without guest-get-time or guest-set-time, a guest that forbids them)."""
    out: dict[str, t.Any] = {"offset_before_ms": None, "offset_after_ms": None, "synced": False, "note": None}
    try:
        out["offset_before_ms"] = _offset_ms(dom, now)
        if opts.sync_clock:
            # with VIR_DOMAIN_TIME_SYNC the time given is ignored (virsh domtime --sync passes 0), but
            # libvirt-python requires the key
            dom.setTime({"seconds": 0, "nseconds": 0}, _libvirt.const(lv, "VIR_DOMAIN_TIME_SYNC") or 1)
            out["synced"] = True
            out["offset_after_ms"] = _offset_ms(dom, now)
        else:
            out["note"] = "not re-synced (sync_clock is false)"
    except Exception as err:  # libvirt's refusal, or a binding that takes other arguments: a note
        detail = _libvirt.libvirt_error_detail(err) if _libvirt.is_libvirt_error(err, lv) else "%s: %s" % (
            type(err).__name__, err)
        out["note"] = "the guest agent could not %s: %s" % (
            "sync the clock" if out["offset_before_ms"] is not None else "read the clock", detail)
    return out


def _fstrim(dom: t.Any, lv: t.Any) -> str:
    try:
        dom.fSTrim(None, 0, 0)
        return "done"
    except Exception as err:
        if not _libvirt.is_libvirt_error(err, lv):
            raise
        return "failed: %s" % _libvirt.libvirt_error_detail(err)


def _elapsed_ms(clock_s: float | None, since: float) -> int | None:
    return None if clock_s is None else max(0, int(round((clock_s - since) * 1000)))


def check_health(dom: t.Any, *, opts: HealthOptions, since: float, expect: str = "running",
                 agent: str | None = None, watch: PanicWatch | None = None, where: str = "the destination",
                 lv: t.Any = None, clock: t.Callable[[], float] = time.monotonic,
                 sleep: t.Callable[[float], None] = time.sleep,
                 now: t.Callable[[], float] = time.time) -> dict[str, t.Any]:
    """Watch the moved guest ``dom`` on the destination and say whether it is healthy.

    :param since: the switch-over on ``clock`` (seconds; the return of ``migrate3``, or the start
        of a cold-moved guest); the window and the agent's timeout count from it.
    :param expect: ``running`` (the guest ran before the move) or ``paused``.
    :param agent: :func:`agent_before` of the source's live XML before the move; only an agent
        that was ``connected`` must answer.
    :param watch: the :class:`PanicWatch` started before the switch-over, or None.
    :returns: ``{healthy, problems: [str], state, panicked, panic, agent, agent_ms, clock,
        fstrim, time_to_healthy_ms, watched_ms}``: ``agent`` is ``answered``, ``no answer``,
        ``none`` (no agent ran before the move) or ``not checked``; ``clock`` None without an
        answering agent, else ``{offset_before_ms, offset_after_ms, synced, note}``; ``panic``
        None or ``{after_ms, how}``; ``time_to_healthy_ms`` from ``since`` to the first moment
        every check held (None when unhealthy).
    :raises: nothing for libvirt failures (they become problems); other errors propagate.
    """
    lv = _libvirt.binding(lv)
    want_agent = agent == "connected"
    result: dict[str, t.Any] = {
        "healthy": False, "problems": [], "state": None, "panicked": False, "panic": None,
        "agent": "none" if not want_agent else "no answer", "agent_ms": None, "clock": None,
        "fstrim": "not asked", "time_to_healthy_ms": None, "watched_ms": 0,
    }
    window_end = since + max(0.0, float(opts.window_s))
    agent_end = since + max(0.0, float(opts.agent_timeout_s))
    state_ok_at: float | None = None
    agent_at: float | None = None
    last_error: str | None = None
    state_words = expect
    while True:
        tick = clock()
        try:
            state, reason = dom.state()[:2]
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            last_error = _libvirt.libvirt_error_detail(err)
            state, reason = None, None
        # the event (when watched) says when and how; the state is what remains of it
        crash_event = watch.first_crash() if watch is not None else None
        crash = crash_of_state(lv, state, reason) if state is not None else None
        if crash_event or crash:
            result["state"] = _libvirt.state_name(lv, state) if state is not None else None
            result["panicked"] = True
            result["panic"] = ({"after_ms": _elapsed_ms(crash_event["at"], since), "how": crash_event["how"]}
                               if crash_event else {"after_ms": _elapsed_ms(tick, since), "how": crash})
            break
        if state is not None:
            result["state"] = state_words = _libvirt.state_name(lv, state)
            if result["state"] == expect:
                state_ok_at = state_ok_at if state_ok_at is not None else tick
            else:
                state_ok_at = None
        if want_agent and agent_at is None and result["state"] == "running":
            why = _ping(dom, lv)
            if why is None:
                agent_at = clock()
            else:
                last_error = why
        pending_agent = want_agent and agent_at is None and clock() < agent_end
        if clock() >= window_end and not pending_agent:
            break
        sleep(POLL_S)
    end = clock()
    result["watched_ms"] = _elapsed_ms(end, since)
    if result["panicked"]:
        result["problems"].append("the guest %s %s ms after the switch-over" % (
            result["panic"]["how"], result["panic"]["after_ms"]))
    elif state_ok_at is None:
        result["problems"].append("the domain is %s on %s, not %s, %s ms after the switch-over%s" % (
            state_words if result["state"] else "unreadable", where, expect, result["watched_ms"],
            " (%s)" % last_error if last_error and not result["state"] else ""))
    if want_agent:
        if agent_at is not None:
            result["agent"] = "answered"
            result["agent_ms"] = _elapsed_ms(agent_at, since)
        elif not result["panicked"] and result["state"] == "running":
            result["problems"].append(
                "the guest agent ran on the source before the move but does not answer guest-ping on %s within "
                "%g s (%s): the guest may hang" % (where, opts.agent_timeout_s, last_error or "no answer"))
        else:
            result["agent"] = "not checked"
    if not result["problems"]:
        result["healthy"] = True
        result["time_to_healthy_ms"] = _elapsed_ms(max(x for x in (state_ok_at, agent_at, since) if x is not None), since)
        if agent_at is not None:
            result["clock"] = _clock(dom, opts, lv, now)
            if opts.fstrim:
                result["fstrim"] = _fstrim(dom, lv)
    return result


def guarded_check(dom: t.Any, **kw: t.Any) -> dict[str, t.Any]:
    """:func:`check_health`, for callers whose guest has already moved: whatever goes wrong in the
    check itself (a binding that behaves unlike the documented one, a bug) must not turn a done
    move into a module failure. Such an error gives the :func:`disabled` result with ``error``
    (one line: what failed) and ``healthy`` None (not known), never an exception."""
    try:
        return check_health(dom, **kw)
    except Exception as err:  # the guest has moved: report, never fail the move on the check's own fault
        return dict(disabled(), error="the guest's health on %s could not be checked (%s: %s); check it by hand "
                    "(virsh domstate --reason; virsh qemu-agent-command ... guest-ping)" % (
                        kw.get("where", "the destination"), type(err).__name__, err))


def disabled() -> dict[str, t.Any]:
    """The result when the check is turned off (``health.enabled: false``)."""
    return {"healthy": None, "problems": [], "state": None, "panicked": False, "panic": None,
            "agent": "not checked", "agent_ms": None, "clock": None, "fstrim": "not asked",
            "time_to_healthy_ms": None, "watched_ms": 0}


def words(health: dict[str, t.Any] | None) -> str:
    """One line for people: ``healthy after 0.3 s (agent answered; clock offset +3600.0 s ->
    +0.002 s, re-synced)``, ``NOT HEALTHY: ...``, or ``not checked``."""
    if not health or health.get("healthy") is None:
        return "not checked"
    if not health.get("healthy"):
        return "NOT HEALTHY: %s" % "; ".join(health.get("problems") or ["unknown"])
    parts = []
    agent = health.get("agent")
    parts.append({"answered": "agent answered guest-ping", "none": "no guest agent ran before the move"}.get(agent, "agent %s" % agent))
    clock = health.get("clock")
    if clock:
        before, after = clock.get("offset_before_ms"), clock.get("offset_after_ms")
        text = "clock offset %s" % _seconds(before)
        if after is not None:
            text += " -> %s (re-synced)" % _seconds(after)
        if clock.get("note"):
            text += " (%s)" % clock["note"]
        parts.append(text)
    if health.get("fstrim") not in (None, "not asked"):
        parts.append("fstrim %s" % health["fstrim"])
    return "healthy %s s after the switch-over, watched %s s (%s)" % (
        _seconds_plain(health.get("time_to_healthy_ms")), _seconds_plain(health.get("watched_ms")), "; ".join(parts))


def _seconds(ms: float | None) -> str:
    return "unknown" if ms is None else "%+.3f s" % (ms / 1000.0)


def _seconds_plain(ms: float | None) -> str:
    return "?" if ms is None else "%.1f" % (ms / 1000.0)


def plan_words(opts: HealthOptions, agent: str | None) -> str:
    """What check mode says will be checked after the move."""
    if not opts.enabled:
        return "no health check (health.enabled is false)"
    what = ["running for %g s after the switch-over" % opts.window_s, "no panic"]
    if agent == "connected":
        what.append("guest-ping within %g s" % opts.agent_timeout_s)
        if opts.sync_clock:
            what.append("clock re-synced")
        if opts.fstrim:
            what.append("fstrim")
    else:
        what.append("no guest agent to ask (its channel is %s)" % (agent or "absent"))
    return "health after the move: " + ", ".join(what)
