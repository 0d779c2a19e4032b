"""What a guest noticed during a move, measured from outside: pings from the observer namespace,
the guest's console clock (``tick N <date -Iseconds>`` every second), and checksums of disk
regions read on the hosts. Used by the migration lab tests and the demo report."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import signal
import subprocess
import time

import lab

TICK = re.compile(r"^tick (\d+) (\S+)\s*$", re.M)


class PingMonitor:
    """``ping -i 0.1`` (10 Hz) from the observer namespace to ``ip`` until stopped."""

    def __init__(self, ip: str = lab.GUEST_IP, interval_s: float = 0.1) -> None:
        self.ip = ip
        self.interval_s = interval_s
        self.proc: subprocess.Popen | None = None
        self.sent = 0
        self.received = 0
        self.output = ""

    def __enter__(self) -> "PingMonitor":
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.OBSERVER[0], "ping", "-n", "-i", str(self.interval_s), "-W", "1", self.ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        time.sleep(1.5)  # let the replies of the last requests arrive
        self.proc.send_signal(signal.SIGINT)
        self.output = self.proc.communicate(timeout=10)[0]
        self.proc = None
        m = re.search(r"(\d+) packets transmitted, (\d+) received", self.output)
        if not m:
            raise AssertionError("no ping summary:\n%s" % self.output[-2000:])
        self.sent, self.received = int(m.group(1)), int(m.group(2))

    @property
    def lost(self) -> int:
        return self.sent - self.received


def console_ticks(name: str = lab.GUEST) -> dict[int, dt.datetime]:
    """All ticks the guest printed, from the console logs of every lab host, by tick number."""
    ticks: dict[int, dt.datetime] = {}
    for host in lab.HOSTS:
        path = lab.hdir(host, "var-log-libvirt", "qemu", "%s-console.log" % name)
        if not os.path.exists(path):
            continue
        with open(path, errors="replace") as f:
            for n, stamp in TICK.findall(f.read()):
                try:
                    ticks[int(n)] = dt.datetime.fromisoformat(stamp)
                except ValueError:
                    continue
    return ticks


def last_tick(name: str = lab.GUEST) -> int:
    ticks = console_ticks(name)
    return max(ticks) if ticks else 0


def tick_gaps(ticks: dict[int, dt.datetime], after: int) -> dict:
    """Largest gap (s) between consecutive ticks numbered above ``after`` and missing numbers."""
    numbers = sorted(n for n in ticks if n > after)
    missing = [n for a, b in zip(numbers, numbers[1:]) for n in range(a + 1, b)]
    gaps = [(ticks[b] - ticks[a]).total_seconds() for a, b in zip(numbers, numbers[1:])]
    return {"count": len(numbers), "missing": missing, "max_gap_s": max(gaps) if gaps else None}


def region_digest(host: str, path: str, regions: list[tuple[int, int]] = None) -> str:
    """sha256 over the written regions (offset MiB, size MiB) of an image on a lab host."""
    regions = regions or lab.GUEST_WRITTEN
    real = lab.hdir(host, "var-lib-libvirt", "images", os.path.basename(path))
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for off_mib, size_mib in regions:
            f.seek(off_mib * 1024 * 1024)
            h.update(f.read(size_mib * 1024 * 1024))
    return h.hexdigest()


def allocation(host: str, name: str) -> int:
    """Bytes a lab host's image really uses (st_blocks * 512)."""
    return os.stat(lab.hdir(host, "var-lib-libvirt", "images", name)).st_blocks * 512


def domain_state(host: str, name: str = lab.GUEST) -> str | None:
    res = lab.in_host(host, ["virsh", "-q", "domstate", name], check=False, capture=True)
    return res.stdout.strip() if res.returncode == 0 else None


#: what the guest, not a run, changes in its live XML: whether a virtio-serial channel's other end
#: (the guest agent) is connected, which flips while a freshly started guest boots
_GUEST_STATE = re.compile(r" state='(?:connected|disconnected)'")


def _without_guest_state(xml: str) -> str:
    return _GUEST_STATE.sub("", xml)


def host_snapshot() -> dict:
    """What a run may change on the lab hosts: each domain with its state and persistent and live
    XML (the live one of an active domain: None for an inactive one), each image file with size
    and allocation, the kvmops manifest. Equal snapshots before and after a run mean the run
    changed nothing on either host."""
    snap: dict = {}
    for host in lab.HOSTS:
        names = lab.in_host_out(host, ["virsh", "-q", "list", "--all", "--name"], check=False).split()
        domains = {}
        for name in names:
            state = domain_state(host, name)
            domains[name] = {
                "state": state,
                "inactive_xml": lab.in_host_out(host, ["virsh", "dumpxml", "--inactive", name], check=False),
                "live_xml": _without_guest_state(lab.in_host_out(host, ["virsh", "dumpxml", name], check=False))
                if state not in (None, "shut off") else None,
            }
        images = {}
        root = lab.hdir(host, "var-lib-libvirt", "images")
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                images[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_blocks * 512, st.st_ino)
        manifest = os.path.join(lab.hdir(host, "var-lib-kvmops-migration"), "manifest.json")
        snap[host] = {"domains": domains, "images": images,
                      "manifest": open(manifest).read() if os.path.exists(manifest) else None}
    return snap
