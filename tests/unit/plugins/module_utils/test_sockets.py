# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of _sockets: parsing ``ss -Htnp``, picking the migration's data connections of one
QEMU process, and closing them (``ss -K``) with a fake runner that plays the kernel."""

from __future__ import annotations

from ansible_collections.kvmops.migration.plugins.module_utils import _runner
from ansible_collections.kvmops.migration.plugins.module_utils import _sockets as s

# recorded on a lab host (hosta) during a storage copy to hostb whose link was cut: two NBD
# connections of QEMU (pid 4242), the ssh session of the libvirt connection, another guest's QEMU
SS_CUT = """\
ESTAB      0      2339968    198.18.0.1:34610   198.18.0.2:49153 users:(("qemu-system-x86",pid=4242,fd=41))
ESTAB      0      480        198.18.0.1:34620   198.18.0.2:49153 users:(("qemu-system-x86",pid=4242,fd=44))
FIN-WAIT-1 0      469        198.18.0.1:50598   198.18.0.2:22
ESTAB      0      0          198.18.0.1:50610   198.18.0.2:22    users:(("ssh",pid=900,fd=3))
ESTAB      0      0          198.18.0.1:40000   198.18.0.2:49160 users:(("qemu-system-x86",pid=5555,fd=40))
ESTAB      0      0          198.18.0.1:40002   198.18.0.2:8080  users:(("qemu-system-x86",pid=4242,fd=50))
"""


def test_parse_ss_reads_states_endpoints_and_pids():
    conns = s.parse_ss(SS_CUT + "\nState Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n")
    assert len(conns) == 6
    assert conns[0] == s.Connection("ESTAB", "198.18.0.1", 34610, "198.18.0.2", 49153, (4242,))
    assert conns[2].pids == () and conns[2].state == "FIN-WAIT-1"


def test_parse_ss_ipv6_and_several_owners():
    line = 'ESTAB 0 0 [fd00::1]:41000 [fd00::2%br0]:49152 users:(("qemu-system-x86",pid=7,fd=3),("x",pid=8,fd=9))'
    (conn,) = s.parse_ss(line)
    assert (conn.local_addr, conn.peer_addr, conn.peer_port, conn.pids) == ("fd00::1", "fd00::2", 49152, (7, 8))


def test_data_connections_are_this_qemus_to_the_destination_on_migration_ports():
    conns = s.parse_ss(SS_CUT)
    picked = s.data_connections(conns, 4242, ["198.18.0.2"])
    # not the ssh session, not the other guest's QEMU, not QEMU's own traffic to port 8080
    assert [(c.local_port, c.peer_port) for c in picked] == [(34610, 49153), (34620, 49153)]
    # explicit ports from the plan narrow it down
    assert s.data_connections(conns, 4242, ["198.18.0.2"], ports=[49152]) == []
    assert len(s.data_connections(conns, 4242, ["198.18.0.2"], ports=[49152, 49153])) == 2
    assert s.data_connections(conns, 4242, ["198.18.0.3"]) == []


class KernelRunner(_runner.Runner):
    """Plays ``ss``: lists the connections it holds, and ``-K`` removes the one named (when the
    kernel can destroy sockets)."""

    def __init__(self, text: str, can_destroy: bool = True) -> None:
        self.conns = s.parse_ss(text)
        self.can_destroy = can_destroy
        self.calls: list[list[str]] = []

    def run(self, argv):
        self.calls.append(argv)
        assert argv[0] == "ss"
        if argv[1] == "-K":
            sport, dport = int(argv[7]), int(argv[12])
            if self.can_destroy:
                self.conns = [c for c in self.conns if not (c.local_port == sport and c.peer_port == dport)]
            return _runner.RunResult(0, "", "")
        lines = ['%s 0 0 %s:%d %s:%d users:(%s)' % (
            c.state, c.local_addr, c.local_port, c.peer_addr, c.peer_port,
            ",".join('("qemu-system-x86",pid=%d,fd=1)' % p for p in c.pids)) for c in self.conns
            if c.peer_addr == argv[-1]]
        return _runner.RunResult(0, "\n".join(lines), "")


def test_sever_closes_exactly_the_data_connections_by_their_four_tuple():
    runner = KernelRunner(SS_CUT)
    done = s.sever(runner, 4242, "198.18.0.2")
    assert [c["local"] for c in done["closed"]] == ["198.18.0.1:34610", "198.18.0.1:34620"]
    assert done["left"] == [] and done["error"] is None
    kills = [c for c in runner.calls if c[1] == "-K"]
    assert kills[0] == ["ss", "-K", "-Htn", "src", "198.18.0.1", "sport", "=", "34610",
                        "dst", "198.18.0.2", "dport", "=", "49153"]
    assert len(kills) == 2
    # the ssh session, the other guest and QEMU's port-8080 connection are still there
    assert sorted(c.local_port for c in runner.conns) == [40000, 40002, 50598, 50610]


def test_sever_on_a_kernel_that_cannot_destroy_sockets_says_so():
    done = s.sever(KernelRunner(SS_CUT, can_destroy=False), 4242, "198.18.0.2")
    assert done["closed"] == [] and len(done["left"]) == 2


def test_sever_reports_a_failing_ss():
    class Broken(_runner.Runner):
        def run(self, argv):
            return _runner.RunResult(127, "", "ss: not found")

    done = s.sever(Broken(), 4242, "198.18.0.2")
    assert done["closed"] == [] and "ss: not found" in done["error"]


def test_qemu_pid_reads_libvirts_pid_file_and_refuses_odd_names(tmp_path):
    (tmp_path / "vm1.pid").write_text("4242\n")
    assert s.qemu_pid("vm1", str(tmp_path)) == 4242
    assert s.qemu_pid("nosuch", str(tmp_path)) is None
    assert s.qemu_pid("../vm1", str(tmp_path)) is None
