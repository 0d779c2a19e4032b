# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest's health after the move (issue 20): the decision table of _health.check_health,
the agent channel read from hostile XML, the panic watch, and the migration driver's use of them
(fake libvirt only: the lab tests move real guests)."""

from __future__ import annotations

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _domain_xml
from ansible_collections.kvmops.migration.plugins.module_utils import _health as h
from ansible_collections.kvmops.migration.plugins.module_utils import _report
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

from fake_libvirt import LV_11_3, Connection, Domain, FakeClock

C = LV_11_3
AGENT_XML = """<domain type='kvm'><name>vm1</name><devices>
  <channel type='unix'><source mode='bind' path='/run/libvirt/qemu/channel/1-vm1/org.qemu.guest_agent.0'/>
    <target type='virtio' name='org.qemu.guest_agent.0' state='%s'/></channel>
  <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0' state='connected'/></channel>
</devices></domain>"""


def run(dom, clock=None, watch=None, agent=None, expect="running", **opts):
    clock = clock or FakeClock(100.0)
    return h.check_health(dom, opts=h.HealthOptions(**opts), since=100.0, expect=expect, agent=agent, watch=watch,
                          where="hostb", lv=C, clock=clock, sleep=clock.sleep, now=lambda: 1_700_000_000.0)


def test_defaults_come_from_the_spec():
    opts = h.HealthOptions()
    assert (opts.enabled, opts.window_s, opts.agent_timeout_s, opts.sync_clock, opts.fstrim) == (True, 2.0, 15.0, True, False)
    assert h.HealthOptions.from_params({"window_s": 5, "sync_clock": None}).window_s == 5
    assert h.HealthOptions.from_params(None) == h.HealthOptions()


@pytest.mark.parametrize("state,expected", [("connected", "connected"), ("disconnected", "disconnected"),
                                            ("", "unknown"), ("bogus", "unknown")])
def test_agent_channel_state(state, expected):
    assert _domain_xml.agent_channel_state(AGENT_XML % state) == expected


def test_agent_channel_absent_and_hostile_xml():
    assert _domain_xml.agent_channel_state("<domain><name>vm1</name><devices/></domain>") is None
    # an external entity is never fetched: libxml2 refuses it in an attribute value
    hostile = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/hostname">]><domain><devices>'
               '<channel><target type="virtio" name="org.qemu.guest_agent.0" state="&x;"/></channel></devices></domain>')
    with pytest.raises(KvmopsError, match="could not be parsed"):
        _domain_xml.agent_channel_state(hostile)
    # a channel of another name or type is not the agent's
    assert _domain_xml.agent_channel_state(AGENT_XML.replace("org.qemu.guest_agent.0", "org.other.0") % "connected") is None


def test_running_guest_without_agent_is_healthy_after_the_window():
    dom = Domain("vm1", state="running")
    got = run(dom)
    assert got["healthy"] is True and got["problems"] == []
    assert got["agent"] == "none" and got["clock"] is None
    assert got["time_to_healthy_ms"] == 0 and got["watched_ms"] >= 2000
    assert dom.agent_commands == []


def test_agent_that_answers_late_sets_time_to_healthy_and_syncs_the_clock():
    clock = FakeClock(100.0)
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: clock() >= 100.8
    dom.clock_offset_s = 3600.0
    got = run(dom, clock=clock, agent="connected")
    assert got["healthy"] is True and got["agent"] == "answered"
    assert 800 <= got["agent_ms"] <= 1000 and got["time_to_healthy_ms"] == got["agent_ms"]
    assert got["clock"]["offset_before_ms"] == pytest.approx(3_600_000, abs=1)
    assert got["clock"]["offset_after_ms"] == pytest.approx(0, abs=1) and got["clock"]["synced"] is True
    assert ("setTime", {"seconds": 0, "nseconds": 0}, 1) in dom.calls
    assert '"guest-ping"' in dom.agent_commands[0]


def test_no_clock_sync_when_disabled_and_fstrim_when_asked():
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: True
    dom.clock_offset_s = -2.5
    got = run(dom, agent="connected", sync_clock=False, fstrim=True)
    assert got["clock"]["offset_before_ms"] == pytest.approx(-2500, abs=1) and got["clock"]["offset_after_ms"] is None
    assert not any(c[0] == "setTime" for c in dom.calls if isinstance(c, tuple))
    assert got["fstrim"] == "done" and ("fSTrim", None, 0) in dom.calls


def test_agent_that_ran_before_but_never_answers_is_a_problem():
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: False
    got = run(dom, agent="connected", agent_timeout_s=3)
    assert got["healthy"] is False and got["agent"] == "no answer"
    assert "does not answer guest-ping on hostb within 3 s" in got["problems"][0]
    assert "not connected" in got["problems"][0]
    assert got["watched_ms"] >= 3000 and got["time_to_healthy_ms"] is None


def test_disconnected_agent_before_the_move_is_not_asked():
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: False
    got = run(dom, agent="disconnected")
    assert got["healthy"] is True and got["agent"] == "none" and dom.agent_commands == []


def test_panic_event_during_the_window_fails_with_its_time():
    clock = FakeClock(100.0)
    dconn = Connection("qemu+ssh://root@hostb/system")
    dom = Domain("vm1", uuid="u-1", state="running")
    dconn.add(dom)
    other = Domain("vm2", uuid="u-2", state="running")
    dconn.add(other)
    watch = h.PanicWatch(clock).start(dconn, "u-1", C)
    real_sleep = clock.sleep

    def sleep(seconds):
        real_sleep(seconds)
        if abs(clock() - 100.6) < 1e-6:
            other.crash()  # another guest's panic is not ours
        if abs(clock() - 101.2) < 1e-6:
            dom.crash(state="running", reason=0)  # on_crash=restart: running again, only the event tells
    clock.sleep = sleep
    got = run(dom, clock=clock, watch=watch)
    watch.stop()
    assert got["healthy"] is False and got["panicked"] is True
    assert got["panic"] == {"after_ms": 1200, "how": "panicked"}
    assert "panicked 1200 ms after the switch-over" in got["problems"][0]
    assert dconn.callbacks == {}


@pytest.mark.parametrize("state,reason,how", [
    ("shutoff", 3, "shut off after a crash"), ("crashed", 1, "crashed (libvirt state crashed)"),
    ("paused", 10, "paused after a crash"), ("running", 9, "running in crashed state")])
def test_crash_seen_in_the_state_alone(state, reason, how):
    dom = Domain("vm1", state=state, reason=reason)
    got = run(dom, watch=None)
    assert got["healthy"] is False and got["panic"]["how"] == how and got["panic"]["after_ms"] == 0


def test_guest_that_stops_without_a_crash_reason_is_not_running():
    dom = Domain("vm1", state="shutoff", reason=1)
    got = run(dom)
    assert got["healthy"] is False and got["panicked"] is False
    assert got["problems"] == ["the domain is shutoff on hostb, not running, 2000 ms after the switch-over"]


def test_paused_guest_stays_paused():
    assert run(Domain("vm1", state="paused"), expect="paused")["healthy"] is True
    assert run(Domain("vm1", state="paused"))["healthy"] is False


def test_watch_without_event_loop_falls_back_to_the_state():
    dconn = Connection("qemu+ssh://root@hostb/system")
    dconn.events = False
    watch = h.PanicWatch().start(dconn, "u-1", C)
    assert watch.error and "event" in watch.error
    watch.stop()


def test_words_and_the_summary_line():
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: True
    dom.clock_offset_s = 3600.0
    got = run(dom, agent="connected")
    line = h.words(got)
    assert line.startswith("healthy 0.0 s after the switch-over, watched 2.0 s (agent answered guest-ping; ")
    assert "clock offset +3600.000 s -> +0.000 s (re-synced)" in line
    result = {"state": "migrated", "changed": True, "stats": {"time_ms": 5000}, "health": got}
    summary = _report.migration_summary("vm1", "hosta", "hostb", result)
    assert summary["time_to_healthy_ms"] == 0 and summary["clock"]["synced"] is True
    assert "guest on hostb: " + line in summary["lines"]
    bad = run(Domain("vm1", state="shutoff", reason=3))
    assert h.words(bad).startswith("NOT HEALTHY: the guest shut off after a crash")
    assert h.words(h.disabled()) == "not checked"


def test_plan_words():
    assert h.plan_words(h.HealthOptions(), "connected") == (
        "health after the move: running for 2 s after the switch-over, no panic, guest-ping within 15 s, clock re-synced")
    assert "no guest agent to ask (its channel is absent)" in h.plan_words(h.HealthOptions(), None)
    assert h.plan_words(h.HealthOptions(enabled=False), None).startswith("no health check")


def test_a_failing_binding_is_a_clock_note_and_a_broken_check_never_raises():
    dom = Domain("vm1", state="running")
    dom.agent_up = lambda: True

    def refuse(time=None, flags=0):
        raise TypeError("Dictionary must contains 'seconds'")
    dom.setTime = refuse
    got = run(dom, agent="connected")
    assert got["healthy"] is True and got["clock"]["synced"] is False
    assert got["clock"]["note"] == "the guest agent could not sync the clock: TypeError: Dictionary must contains 'seconds'"

    def broken():
        raise RuntimeError("bug")
    dom.state = broken
    clock = FakeClock(100.0)
    got = h.guarded_check(dom, opts=h.HealthOptions(), since=100.0, where="hostb", lv=C, clock=clock, sleep=clock.sleep)
    assert got["healthy"] is None and got["error"].startswith("the guest's health on hostb could not be checked (RuntimeError: bug)")
