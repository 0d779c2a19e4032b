"""Issue 19 item 4 in the lab: post-copy without losing the guest. migrate.yml moves migratetest2
hosta -> hostb (storage copy, 10 MiB/s, post-copy allowed) while the guest writes the proof's
record stream to its data disk and holds 100 MB of random data in memory. Once the storage copy
is done, the move is switched to post-copy by hand (virsh migrate-postcopy; the post-copy phase
capped at 8 MiB/s so that it lasts), and the link between the hosts is cut (every packet
dropped). While it is cut: the guest is in post-copy on both hosts, the source paused, nothing
was removed on either host. After the repair the move completes; the playbook succeeds, the
records written are all valid on hostb's disk and the data in the guest's memory is unchanged.

Duration: about 3 min (two guest re-creations, a 45 s cut)."""

from __future__ import annotations

import re
import subprocess
import time

import proof
from conftest import ROOT, lab, playbook_command
from test_encryption import guest_shell
from test_faults import CUT_RULES, left_on_dest
from test_proof import acked_records, read_records

GUEST = lab.GUEST
SRC, DEST = "hosta", "hostb"
#: the memory fill: files of random data in the guest's RAM file system, each written and summed
#: by one command well within the command port's 3 s of silence
FILL_FILES = ["/tmp/pcfill%d" % i for i in range(5)]
CUT_S = 45


def domstate(host: str) -> str:
    return lab.in_host_out(host, ["virsh", "domstate", "--reason", GUEST], check=False)


def memory_phase() -> bool:
    """The source's job copies memory: the storage copy is done (post-copy moves no disk data)."""
    out = lab.in_host(SRC, ["virsh", "domjobinfo", GUEST], check=False, capture=True).stdout
    m = re.search(r"^Memory processed:\s+([\d.]+) (B|KiB|MiB|GiB)", out, re.M)
    return bool(m) and float(m.group(1)) > 0 and m.group(2) != "B"


def shell(command: str, expect: str) -> str:
    """guest_shell(command) until its output matches ``expect`` (the command port listens again
    only a moment after each connection: a quick next call may find it closed), 20 tries."""
    for _try in range(20):
        out = guest_shell(command)
        if re.search(expect, out, re.M):
            return out
        time.sleep(0.3)
    raise AssertionError("the guest did not answer %r as %r" % (command, expect))


def memory_fill() -> dict[str, str]:
    """{path: md5} of the fill files, as the guest reads them now."""
    sums: dict[str, str] = {}
    for path in FILL_FILES:
        out = shell("md5sum %s 2>&1" % path, r"^[0-9a-f]{32}\s+%s$|No such file" % path)
        m = re.search(r"^([0-9a-f]{32})\s+%s$" % path, out, re.M)
        if m:
            sums[path] = m.group(1)
    return sums


def start_writer() -> None:
    """The proof's record writer in the guest, running (10 records acknowledged); started again
    once if a freshly booted guest has not acknowledged any within 20 s."""
    for attempt in range(2):
        shell("setsid recwriter 100000 0.05 </dev/null >/dev/null 2>&1 & echo started", "^started$")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if acked_records() >= 10:
                return
            time.sleep(0.5)
        print("record writer, attempt %d: %d records; guest processes: %s" % (
            attempt + 1, acked_records(), shell("ps | grep -c recwrite; echo ok", "ok")))
    raise AssertionError("the guest's record writer acknowledged no records")


def test_link_cut_in_postcopy_loses_nothing(guest_on_hosta):
    # setsid: the writer outlives the shell of the command port (a plain & one did not here)
    start_writer()
    for path in FILL_FILES:
        shell("head -c 20000000 /dev/urandom > %s; echo done" % path, "^done$")
    before = memory_fill()
    assert len(before) == len(FILL_FILES), before
    images_before = left_on_dest()["images"]
    cmd, env = playbook_command(["playbooks/migrate.yml", "-e", "vm=%s" % GUEST, "-e", "dest=%s" % DEST,
                                 "-e", "bandwidth=10", "-e", "migrate_guest_postcopy=true"])
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cut = False
    try:
        lab.wait_for(memory_phase, "the memory phase of the move", 150)
        lab.in_host(SRC, ["virsh", "migrate-setspeed", "--postcopy", GUEST, "8"])
        lab.in_host(SRC, ["virsh", "migrate-postcopy", GUEST])
        lab.wait_for(lambda: "post-copy" in domstate(SRC), "post-copy on hosta", 20)
        lab.in_host(DEST, ["nft", "-f", "-"], input=CUT_RULES % {"src": lab.HOSTS[SRC]})
        cut = True
        cut_at = time.monotonic()
        # the destination connection's keepalive gives up after about 30 s: libvirt marks it failed
        lab.wait_for(lambda: "post-copy failed" in domstate(SRC), "hosta: paused (post-copy failed)", CUT_S + 15)
        during = {SRC: domstate(SRC), DEST: domstate(DEST)}
        print("while cut:", during)
        assert during[SRC].startswith("paused (post-copy"), during
        assert during[DEST].startswith(("running (post-copy", "paused (post-copy")), during
        assert run.poll() is None, "the playbook ended while the link was cut"
        left = left_on_dest()
        assert left["images"] and left["domain"] is not None, left  # nothing removed on hostb
        time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
    finally:
        if cut:
            lab.in_host(DEST, ["nft", "delete", "table", "inet", "kvmops_lab_cut"], check=False, capture=True)
        out = run.communicate(timeout=600)[0]
    text = re.sub(r"\s+", " ", out)
    assert run.returncode == 0, out[-4000:]
    assert "Traceback" not in out
    assert proof.domain_state(DEST) == "running" and proof.domain_state(SRC) is None
    # the proof: every acknowledged record valid on hostb's disk, the memory fill unchanged
    time.sleep(2)
    shell("killall recwriter; echo stopped", "^stopped$")
    time.sleep(2)
    acked, records = acked_records(), read_records(DEST)
    assert acked > 10 and all(records.get(n) == "valid" for n in range(1, acked + 1)), (acked, len(records))
    assert sorted(n for n, v in records.items() if v != "valid") == []
    after = memory_fill()
    assert after == before, (before, after)
    # the migrate module said what happened (its note, shown as a warning of the wait task)
    said = re.findall(r"the post-copy move lost its link.{0,400}", text)
    print("module note:", said[:1])
    assert said and "completed" in said[0], text[-3000:]
    assert images_before == []
