"""Issue 20 in the lab: after the move the guest itself is checked on the destination.

A guest with the QEMU guest agent (Debian's qemu-guest-agent in its initramfs, on a virtio-serial
channel) whose clock was set an hour ahead is moved with the main job: the summary and set_stats
report it healthy, the agent answering, the clock offset before (about +3600 s) and after the
re-sync (near 0, also read independently with ``virsh domtime``). A guest without agent is
healthy with "no guest agent". A guest made to panic right after the switch-over (sysrq through
its lab shell, once it runs on the destination; its pvpanic device tells QEMU, and libvirt destroys
it, ``<on_crash>destroy``) is reported as a failed move with the reason, its source images kept."""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from conftest import lab, lab_cmd, migrate_json

GUEST = "healthtest"
IP = "198.18.0.26"
MAC = "0x26"


def guest_shell(command: str, ip: str = IP) -> None:
    """Run a command in the guest (its lab command port on eth1), from the observer."""
    lab.run(["ip", "netns", "exec", lab.OBSERVER[0], "busybox", "nc", "-w", "2", ip, "2323"],
            input=command + "\n", check=False, capture=True, timeout=30)


def guest_offset_s(host: str) -> float:
    """The guest's clock minus the host's, from ``virsh domtime`` (the agent's guest-get-time)."""
    before = float(lab.in_host_out(host, ["date", "+%s.%N"]).strip())
    out = lab.in_host_out(host, ["virsh", "domtime", GUEST])
    after = float(lab.in_host_out(host, ["date", "+%s.%N"]).strip())
    guest = int(re.search(r"Time:\s*(\d+)", out).group(1))
    return guest - (before + after) / 2.0


@pytest.fixture
def fresh_guest(lab_up):
    created = []

    def make(*extra: str) -> None:
        lab_cmd("guest", "--name", GUEST, "--ip", IP, "--mac", MAC, "--recreate", "--wait", "--written-mib", "16", *extra)
        created.append(True)
    yield make
    for host in lab.HOSTS:
        lab.remove_guest(host, GUEST)


def test_agent_guest_is_healthy_and_its_clock_resynced(fresh_guest):
    fresh_guest()
    lab.wait_for(lambda: lab.in_host("hosta", ["virsh", "qemu-agent-command", GUEST, '{"execute":"guest-ping"}'],
                                     check=False, capture=True).returncode == 0, "the guest agent to answer", 60)
    guest_shell("date -s @$(( $(date +%s) + 3600 ))")
    assert guest_offset_s("hosta") > 3500
    res, stats, out, _recap = migrate_json(GUEST, "-e", "dest=hostb", "-e", "migrate_guest_fstrim=true")
    assert res.returncode == 0, out[-6000:]
    health = stats["health"]
    assert health["healthy"] is True and health["problems"] == [], health
    assert health["fstrim"] == "done", health  # virDomainFSTrim through the agent (the guest mounts no disk)
    assert health["agent"] == "answered" and health["panicked"] is False and health["state"] == "running"
    assert 0 <= health["agent_ms"] <= 15000 and health["time_to_healthy_ms"] == health["agent_ms"], health
    assert health["watched_ms"] >= 2000
    assert 3_500_000 < health["clock"]["offset_before_ms"] < 3_700_000, health["clock"]
    assert abs(health["clock"]["offset_after_ms"]) < 2000 and health["clock"]["synced"] is True, health["clock"]
    assert stats["time_to_healthy_ms"] == health["time_to_healthy_ms"] and stats["clock"] == health["clock"]
    # read independently, on the destination
    assert abs(guest_offset_s("hostb")) < 2.5
    assert lab.domain_hosts(GUEST) == {"hostb": "running"}
    line = [ln for ln in out.splitlines() if "guest on hostb: healthy" in ln]
    assert line and "agent answered guest-ping" in line[0] and "(re-synced)" in line[0], out[-4000:]
    print(line[0].strip())


def test_guest_without_agent_is_healthy_with_no_agent_to_ask(fresh_guest):
    fresh_guest("--no-agent")
    res, stats, out, _recap = migrate_json(GUEST, "-e", "dest=hostb")
    assert res.returncode == 0, out[-6000:]
    health = stats["health"]
    assert health["healthy"] is True and health["agent"] == "none" and health["clock"] is None, health
    assert health["time_to_healthy_ms"] is not None and health["time_to_healthy_ms"] < 2000
    assert any("guest on hostb: healthy" in ln and "no guest agent ran before the move" in ln for ln in out.splitlines())


def test_guest_that_panics_after_the_switch_over_fails_the_move(fresh_guest):
    fresh_guest()
    lab.wait_for(lambda: lab.in_host("hosta", ["virsh", "qemu-agent-command", GUEST, '{"execute":"guest-ping"}'],
                                     check=False, capture=True).returncode == 0, "the guest agent to answer", 60)
    source_images = {ext: lab.hdir("hosta", "var-lib-libvirt", "images", "%s.%s" % (GUEST, ext)) for ext in ("raw", "swap")}
    fired: list[float] = []

    def panic_once_moved() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            res = lab.in_host("hostb", ["virsh", "-q", "domstate", GUEST], check=False, capture=True)
            if res.returncode == 0 and res.stdout.strip() == "running":
                # in the background, so that the shell's connection closes before the guest dies
                guest_shell("(sleep 0.2; echo c > /proc/sysrq-trigger) >/dev/null 2>&1 & echo armed")
                fired.append(time.monotonic())
                return
            time.sleep(0.2)
    trigger = threading.Thread(target=panic_once_moved, daemon=True)
    trigger.start()
    res, stats, out, _recap = migrate_json(GUEST, "-e", "dest=hostb", "-e", "migrate_guest_health_window_s=30")
    trigger.join(timeout=60)
    assert fired, "the guest never ran on hostb"
    assert res.returncode != 0, out[-6000:]
    assert stats["state"] == "moved_unverified", stats
    assert stats["health"]["panicked"] is True and stats["health"]["healthy"] is False, stats["health"]
    assert stats["health"]["panic"]["how"] == "panicked", stats["health"]
    text = re.sub(r"\s+", " ", out)
    assert "was moved to hostb, but it is not healthy there: the guest panicked" in text, text[-4000:]
    assert "The guest was moved but its verification failed; nothing was removed." in text
    assert "Traceback" not in out
    # libvirt destroyed it (on_crash destroy): shut off on hostb, gone from hosta, its source images kept
    state = lab.in_host_out("hostb", ["virsh", "domstate", "--reason", GUEST]).strip()
    assert state == "shut off (crashed)", state
    assert "hosta" not in lab.domain_hosts(GUEST)
    for path in source_images.values():
        assert os.path.exists(path), path
