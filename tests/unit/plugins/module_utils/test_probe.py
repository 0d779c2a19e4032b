# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probes between the hosts (``_probe``), with real sockets on 127.0.0.1 and real files:
a kvmops listener answers (open), a port nobody holds resets (refused), another program's
listener is told apart (open_other), a full accept queue drops the SYN (timeout); markers are
made exclusively, seen, and removed only when they are ours."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _probe
from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

PROBE = "k3v9x0q2m8a1z7c4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bind_local(port: int, address: str = "") -> socket.socket:
    return _probe._bind(port, "127.0.0.1")


def test_listener_answers_its_probe_and_the_source_sees_open():
    sockets, ports = _probe.open_listeners([free_port()], 65535, bind=bind_local)
    assert ports[0]["state"] == "listening"
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(_probe.serve(sockets, PROBE, 10)))
    thread.start()
    try:
        assert _probe.probe_port("127.0.0.1", ports[0]["port"], PROBE, 2.0) == "open"
    finally:
        thread.join(5)
        for sock in sockets:
            sock.close()
    assert seen == {ports[0]["port"]: ["127.0.0.1"]}  # one probe per port: it ended by itself


def test_a_wrong_probe_id_is_not_answered():
    sockets, ports = _probe.open_listeners([free_port()], 65535, bind=bind_local)
    thread = threading.Thread(target=_probe.serve, args=(sockets, PROBE, 1.5))
    thread.start()
    try:
        assert _probe.probe_port("127.0.0.1", ports[0]["port"], "another-probe-id", 1.0) == "open_other"
    finally:
        thread.join(5)
        for sock in sockets:
            sock.close()


def test_a_port_nobody_holds_is_refused():
    assert _probe.probe_port("127.0.0.1", free_port(), PROBE, 1.0) == "refused"


def test_another_program_on_the_port_is_open_other_not_open():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)

        def accept_and_close():
            conn, _peer = other.accept()
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            conn.close()

        thread = threading.Thread(target=accept_and_close)
        thread.start()
        assert _probe.probe_port("127.0.0.1", other.getsockname()[1], PROBE, 1.0) == "open_other"
        thread.join(5)
        # without a probe id a plain connect only sees that something listens
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        assert _probe.probe_port("127.0.0.1", plain.getsockname()[1], None, 1.0) == "open"


def test_no_answer_at_all_is_timeout():
    """A listener whose accept queue is full: Linux drops the next SYN, as a DROP rule does."""
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = []
        try:
            for _n in range(4):  # fill the accept queue (backlog 0 keeps one or two)
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                queued.append(sock)
            time.sleep(0.2)
            assert _probe.probe_port("127.0.0.1", port, PROBE, 0.5) == "timeout"
        finally:
            for sock in queued:
                sock.close()


def test_a_busy_port_is_replaced_by_the_next_free_one_as_libvirt_allocates():
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        sockets, ports = _probe.open_listeners([port, port], port + 40, bind=bind_local)
        try:
            assert ports[0]["state"] == "listening" and ports[0]["port"] > port
            assert ports[0]["reason"] == "ports %d in use" % port
            assert ports[1]["state"] == "listening" and ports[1]["port"] > ports[0]["port"]
        finally:
            for sock in sockets:
                sock.close()
        _s, none = _probe.open_listeners([port], port, bind=bind_local)
        assert none == [{"requested": port, "port": None, "state": "unavailable",
                         "reason": "every port from %d to %d is in use" % (port, port)}]


def test_markers_are_made_once_per_directory_seen_and_removed_only_when_ours(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    paths = [str(images / "vm1.qcow2"), str(images / "vm1-data.raw"), str(tmp_path / "missing" / "x.raw"),
             "/dev/vg0/vm1"]
    markers = _probe.make_markers(paths, PROBE)
    expected = [(str(images), "created"), (str(tmp_path / "missing"), "absent")]
    assert [(m["dir"], m["state"]) for m in markers] == expected
    assert _probe.marker_seen(markers[0], PROBE)
    assert not _probe.marker_seen(markers[1], PROBE)
    assert oct(os.stat(markers[0]["path"]).st_mode & 0o777) == "0o600"
    # never over an existing file
    again = _probe.make_markers(paths[:1], PROBE)
    assert again[0]["state"] == "error" and "File exists" in again[0]["reason"]
    # a file of the same name that is not ours is left alone
    (images / "other").write_text("x")
    foreign = {"path": str(images / "other")}
    assert _probe.remove_markers([foreign], PROBE) == []
    assert _probe.remove_markers(_probe.marker_entries(paths, PROBE), PROBE) == [markers[0]["path"]]
    assert not os.path.exists(markers[0]["path"]) and (images / "other").exists()


def test_probe_id_is_checked():
    with pytest.raises(KvmopsError, match="probe_id must be"):
        _probe.check_probe_id("../etc")


def test_start_detaches_a_listener_that_ends_after_the_probe_and_removes_its_markers(tmp_path):
    """The module's backend for real: it returns once bound; the detached process answers and
    then removes the markers by itself."""
    port = free_port()
    res = _probe.start([port], [str(tmp_path / "vm1.qcow2")], PROBE, port_max=port + 20, lifetime_s=20,
                       address="127.0.0.1")
    assert res["pid"] > 0 and res["ports"][0]["state"] == "listening"
    marker = res["markers"][0]
    assert marker["state"] == "created" and _probe.marker_seen(marker, PROBE)
    assert _probe.probe_port("127.0.0.1", res["ports"][0]["port"], PROBE, 2.0) == "open"
    deadline = time.monotonic() + 10
    while os.path.exists(marker["path"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(marker["path"])
    assert _probe.probe_port("127.0.0.1", res["ports"][0]["port"], PROBE, 1.0) == "refused"


# --------------------------------------------------------------------------------------------
# Issue 19: the link measured through the probe (KVMOPS-STREAM)
# --------------------------------------------------------------------------------------------

def test_the_link_probe_streams_to_the_listener_which_reports_what_it_received():
    sockets, ports = _probe.open_listeners([free_port()], 65535, bind=bind_local)
    seen = {}
    thread = threading.Thread(target=lambda: seen.update(_probe.serve(sockets, PROBE, 10)))
    thread.start()
    try:
        result, link = _probe.probe_link("127.0.0.1", ports[0]["port"], PROBE, 2.0, seconds=0.3)
    finally:
        thread.join(5)
        for sock in sockets:
            sock.close()
    assert result == "open" and link is not None, link
    # bounded: at most 256 MiB (the first read is not counted) and about 0.3 s
    assert 1024 ** 2 <= link["bytes"] <= _probe.STREAM_MAX_BYTES and 0 < link["seconds"] <= 1.0, link
    assert link["bps"] == pytest.approx(link["bytes"] / link["seconds"], rel=0.01) and link["port"] == ports[0]["port"]
    assert seen == {ports[0]["port"]: ["127.0.0.1"]}  # it counted as the port's probe: the listener ended


def test_the_link_probe_with_a_wrong_id_measures_nothing():
    sockets, ports = _probe.open_listeners([free_port()], 65535, bind=bind_local)
    thread = threading.Thread(target=_probe.serve, args=(sockets, PROBE, 1.5))
    thread.start()
    try:
        assert _probe.probe_link("127.0.0.1", ports[0]["port"], "another-probe-id", 1.0) == ("open_other", None)
    finally:
        thread.join(5)
        for sock in sockets:
            sock.close()
    assert _probe.probe_link("127.0.0.1", free_port(), PROBE, 1.0) == ("refused", None)


def test_the_listener_times_the_stream_from_its_first_read_and_caps_it():
    """receive_stream over a socketpair with a stepping clock: the bytes after the first read,
    over the time from the first read to the last; a source sending more than asked is cut off."""
    left, right = socket.socketpair()
    ticks = iter([0.001 * i for i in range(100000)])
    chunk = bytes(1024 * 1024)

    def send_four():
        for dummy in range(4):
            left.sendall(chunk)
        left.shutdown(socket.SHUT_WR)
    with left, right:
        sender = threading.Thread(target=send_four)
        sender.start()
        got, took = _probe.receive_stream(right, 64 * 1024 ** 2, 1.0, clock=lambda: next(ticks))
        sender.join(5)
    assert 3 * 1024 ** 2 <= got < 4 * 1024 ** 2 and took > 0  # the first read (at most 1 MiB) not counted
    assert _probe.link_rate(got, took) == pytest.approx(got / took)
    # the listener's own bounds hold whatever the source asks for
    left, right = socket.socketpair()
    stop = threading.Event()

    def flood():
        with contextlib.suppress(OSError):
            while not stop.is_set():
                left.sendall(chunk)
    sender = threading.Thread(target=flood)
    sender.start()
    try:
        got, took = _probe.receive_stream(right, 10 ** 12, 3600.0)
    finally:
        stop.set()
        right.close()
        sender.join(5)
        left.close()
    assert got <= _probe.STREAM_MAX_BYTES + 2 * 1024 * 1024 and took <= _probe.STREAM_MAX_S + _probe.LINE_TIMEOUT_S + 0.5


def test_link_rate_and_the_rate_line():
    assert _probe.link_rate(112 * 1024 ** 2, 1.0) == 112 * 1024 ** 2
    assert _probe.link_rate(512 * 1024, 1.0) is None  # too few bytes to tell
    assert _probe.link_rate(10 * 1024 ** 2, 0.001) is None  # too short
    assert _probe.parse_rate("KVMOPS-RATE 117440512 1.000200") == (117440512, 1.0002)
    assert _probe.parse_rate("KVMOPS-OK x 1") is None and _probe.parse_rate("KVMOPS-RATE x y") is None
