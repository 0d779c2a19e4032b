# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Probes between the two hosts of a move, for the pre-flight: the destination's half (short-lived
listeners on the migration ports, marker files in the guest's image directories) and the
source's half (connect to the listeners, look for the markers).

Why a listener
--------------
The destination's QEMU listens on its migration and NBD ports only while an incoming migration
runs, so a plain connect from the source cannot tell a firewall that rejects (REJECT: RST) from
a port where nothing listens (the kernel's RST), and a dropped SYN costs the whole move after the
images were created. With a kvmops listener holding the very port the move will use (the first
free port at or above the one asked for, as libvirt's port allocator picks it), the source's
connect tells the three apart: ``open`` (the listener answered with this probe's id),
``refused`` (RST although the listener holds the port: a REJECT rule on the way or on the host),
``timeout`` (no answer at all: a firewall drops it); ``open_other`` is an answer that is not the
listener's (a NAT or proxy sends the port elsewhere).

Why a marker
------------
Two hosts see the same storage (NFS, a cluster filesystem, a bind mount) when a file made in a
directory on one host appears in that directory on the other (Nova's shared storage test). An
inode and size that match prove less: cloned hosts keep both.

The destination's half runs as the ``preflight_dest`` module: it binds the listeners and writes
the markers, then hands the bound sockets to a detached child (double fork, ``setsid``, standard
streams on ``/dev/null``: the Ansible connection is released at once) that answers probes until
every port was probed or ``lifetime_s`` passed, then removes its markers. The module returns only
after the ports are bound, so the source never races the listener, and it never connects to a
port the listener does not hold (one held by another incoming migration is left alone).

Protocol, one line each way: the source sends ``KVMOPS-PROBE <probe_id>\\n``, the listener answers
``KVMOPS-OK <probe_id> <port>\\n`` and closes.

The link (issue 19): the source may instead send ``KVMOPS-STREAM <probe_id> <max_bytes>
<max_ms>\\n``; the listener answers the same ``KVMOPS-OK`` line, then reads what the source
streams (zeros, at most ``max_bytes`` and ``max_ms``, each capped by the listener at
:data:`STREAM_MAX_BYTES` and :data:`STREAM_MAX_S`) until the source shuts its side, and answers
``KVMOPS-RATE <bytes> <seconds>\\n``: the bytes received after the first read and the time from
the first read to the last, measured on the receiving side (the sender's socket buffers cannot
inflate it). The source computes the rate with :func:`link_rate`. This probe also counts as the
port's probe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import time
import typing as t

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

HELLO = "KVMOPS-PROBE"
ACK = "KVMOPS-OK"
STREAM = "KVMOPS-STREAM"
RATE = "KVMOPS-RATE"
#: the link stream's bounds (both sides): at most this many bytes and seconds
STREAM_MAX_BYTES = 256 * 1024 ** 2
STREAM_MAX_S = 1.0
#: a stream shorter than this (seconds, or bytes after the first read) gives no rate
STREAM_MIN_S = 0.01
STREAM_MIN_BYTES = 1024 ** 2
_CHUNK = 256 * 1024
#: file name of a marker: this prefix and the probe id
MARKER_PREFIX = ".kvmops-probe-"
#: the end of libvirt's default migration port range (qemu.conf migration_port_max)
DEFAULT_PORT_MAX = 49215
DEFAULT_LIFETIME_S = 120.0
#: what a line exchange may take once connected
LINE_TIMEOUT_S = 2.0
_PROBE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def check_probe_id(probe_id: str) -> str:
    """:raises KvmopsError: a probe id that is not 8-64 letters, digits, ``-`` or ``_`` (it
    becomes part of file names)."""
    if not isinstance(probe_id, str) or not _PROBE_ID_RE.match(probe_id):
        raise KvmopsError("probe_id must be 8 to 64 letters, digits, '-' or '_', got %r." % (probe_id,))
    return probe_id


def marker_line(probe_id: str) -> str:
    """The content of a marker file of ``probe_id``."""
    return "kvmops.migration shared storage probe %s\n" % probe_id


# --------------------------------------------------------------------------------------------
# The destination's half
# --------------------------------------------------------------------------------------------

def _bind(port: int, address: str = "") -> socket.socket:
    """A listening TCP socket on ``port`` of every address (IPv6 dual stack where the host has
    IPv6, else IPv4), or of ``address``. :raises OSError: the bind failed (EADDRINUSE ...)."""
    if address:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        where: tuple = (address.strip("[]"), port)
    else:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            where = ("::", port)
        except OSError:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            where = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        sock.listen(8)
    except OSError:
        sock.close()
        raise
    return sock


def open_listeners(requested: t.Sequence[int], port_max: int = DEFAULT_PORT_MAX, address: str = "",
                   bind: t.Callable[[int, str], socket.socket] = _bind
                   ) -> tuple[list[socket.socket], list[dict[str, t.Any]]]:
    """Bind one listener per requested port, in order: the first port at or above it (up to
    ``port_max``) that is free and not taken by an earlier one, as libvirt's port allocator
    picks the migration and then the NBD port.

    :returns: ``(sockets, ports)``; ``ports`` is ``[{requested, port, state, reason}]`` with
        state ``listening`` (``port`` is held) or ``unavailable`` (``port`` None, ``reason``).
    """
    sockets: list[socket.socket] = []
    out: list[dict[str, t.Any]] = []
    taken: set[int] = set()
    for want in requested:
        entry: dict[str, t.Any] = {"requested": int(want), "port": None, "state": "unavailable", "reason": None}
        busy = []
        for port in range(int(want), max(int(want), int(port_max)) + 1):
            if port in taken:
                continue
            try:
                sock = bind(port, address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    busy.append(port)
                    continue
                entry["reason"] = "cannot listen on port %d: %s" % (port, err.strerror or err)
                break
            sockets.append(sock)
            taken.add(port)
            entry.update(port=port, state="listening",
                         reason=("ports %s in use" % ", ".join(str(p) for p in busy)) if busy else None)
            break
        else:
            entry["reason"] = "every port from %d to %d is in use" % (int(want), int(port_max))
        out.append(entry)
    return sockets, out


def make_markers(paths: t.Iterable[str], probe_id: str) -> list[dict[str, t.Any]]:
    """One marker file per directory of ``paths`` (block devices under ``/dev`` are skipped),
    created exclusively (never over an existing file), mode 0600.

    :returns: ``[{dir, path, state: created|absent|error, reason}]``: ``absent`` when the
        directory does not exist on this host.
    """
    out: list[dict[str, t.Any]] = []
    seen: set[str] = set()
    for path in paths:
        if not path or not os.path.isabs(path) or path.startswith("/dev/"):
            continue
        directory = os.path.dirname(os.path.normpath(path))
        if directory in seen:
            continue
        seen.add(directory)
        marker = os.path.join(directory, MARKER_PREFIX + probe_id)
        entry = {"dir": directory, "path": marker, "state": "created", "reason": None}
        if not os.path.isdir(directory):
            entry.update(state="absent", reason="the directory does not exist on this host")
        else:
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(marker_line(probe_id))
            except OSError as err:
                entry.update(state="error", reason="cannot create %s: %s" % (marker, err.strerror or err))
        out.append(entry)
    return out


def remove_markers(markers: t.Iterable[dict[str, t.Any]], probe_id: str) -> list[str]:
    """Remove the marker files of ``probe_id`` that hold its line (never another file).

    :returns: the paths removed.
    """
    removed = []
    for entry in markers:
        path = entry.get("path")
        if not path or os.path.basename(path) != MARKER_PREFIX + probe_id:
            continue
        with contextlib.suppress(OSError):
            with open(path, "r", encoding="utf-8") as handle:
                if handle.read(256) != marker_line(probe_id):
                    continue
            os.unlink(path)
            removed.append(path)
    return removed


def marker_entries(paths: t.Iterable[str], probe_id: str) -> list[dict[str, t.Any]]:
    """The marker entries of ``probe_id`` for the directories of ``paths`` (for removal)."""
    dirs = sorted({os.path.dirname(os.path.normpath(p)) for p in paths
                   if p and os.path.isabs(p) and not p.startswith("/dev/")})
    return [{"dir": d, "path": os.path.join(d, MARKER_PREFIX + probe_id)} for d in dirs]


def serve(sockets: t.Sequence[socket.socket], probe_id: str, lifetime_s: float,
          clock: t.Callable[[], float] = time.monotonic) -> dict[int, list[str]]:
    """Answer probes of ``probe_id`` on ``sockets`` until each port was probed once or
    ``lifetime_s`` passed; a connection without the right line is closed unanswered.

    :returns: port -> the peer addresses whose probe was answered.
    """
    seen: dict[int, list[str]] = {s.getsockname()[1]: [] for s in sockets}
    deadline = clock() + float(lifetime_s)
    waiting = list(sockets)
    while waiting:
        left = deadline - clock()
        if left <= 0:
            break
        ready, _w, _x = select.select(waiting, [], [], min(left, 1.0))
        for sock in ready:
            try:
                conn, peer = sock.accept()
            except OSError:
                continue
            port = sock.getsockname()[1]
            with conn:
                conn.settimeout(LINE_TIMEOUT_S)
                try:
                    line = _read_line(conn)
                    words = line.split()
                    if line == "%s %s" % (HELLO, probe_id):
                        conn.sendall(("%s %s %d\n" % (ACK, probe_id, port)).encode("ascii"))
                        seen[port].append(str(peer[0]))
                    elif words[:2] == [STREAM, probe_id] and len(words) == 4 and words[2].isdigit() and words[3].isdigit():
                        conn.sendall(("%s %s %d\n" % (ACK, probe_id, port)).encode("ascii"))
                        seen[port].append(str(peer[0]))
                        got, took = receive_stream(conn, int(words[2]), int(words[3]) / 1000.0, clock)
                        conn.sendall(("%s %d %.6f\n" % (RATE, got, took)).encode("ascii"))
                except OSError:
                    continue
            if seen[port]:
                waiting.remove(sock)
    return seen


def receive_stream(conn: socket.socket, max_bytes: int, max_s: float,
                   clock: t.Callable[[], float] = time.monotonic) -> tuple[int, float]:
    """The listener's side of the link stream: read until the source shuts its side, or
    ``max_bytes`` (at most :data:`STREAM_MAX_BYTES`) arrived, or ``max_s`` (at most
    :data:`STREAM_MAX_S`) plus :data:`LINE_TIMEOUT_S` passed.

    :returns: ``(bytes, seconds)``: the bytes received after the first read, over the time from
        the first read to the last (the rate of the link as the receiver saw it).
    """
    limit = min(int(max_bytes), STREAM_MAX_BYTES) + _CHUNK
    deadline = clock() + min(float(max_s), STREAM_MAX_S) + LINE_TIMEOUT_S
    total = after_first = 0
    first = last = None
    buf = bytearray(1024 * 1024)
    while total < limit:
        left = deadline - clock()
        if left <= 0:
            break
        conn.settimeout(min(left, LINE_TIMEOUT_S))
        try:
            n = conn.recv_into(buf)
        except socket.timeout:
            break
        if not n:
            break
        now = clock()
        total += n
        if first is None:
            first = now
        else:
            after_first += n
        last = now
    return after_first, (last - first) if first is not None and last is not None else 0.0


def link_rate(received: int, seconds: float) -> float | None:
    """Bytes per second of a stream the listener received (:func:`receive_stream`); None when
    it was too short to tell (under :data:`STREAM_MIN_S` or :data:`STREAM_MIN_BYTES`).

    >>> link_rate(100 * 1024 ** 2, 1.0) == 100 * 1024 ** 2
    True
    >>> link_rate(1000, 1.0) is None
    True
    """
    if seconds < STREAM_MIN_S or received < STREAM_MIN_BYTES:
        return None
    return float(received) / float(seconds)


def parse_rate(line: str) -> tuple[int, float] | None:
    """``(bytes, seconds)`` of a ``KVMOPS-RATE <bytes> <seconds>`` line, None for any other."""
    words = line.split()
    if len(words) != 3 or words[0] != RATE:
        return None
    try:
        return int(words[1]), float(words[2])
    except ValueError:
        return None


def _read_line(conn: socket.socket, limit: int = 256) -> str:
    data = b""
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(limit)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("ascii", "replace").strip()


def detach(work: t.Callable[[], None], keep_fds: t.Iterable[int] = ()) -> int:
    """Run ``work`` in a detached grandchild (double fork, ``setsid``, standard streams on
    ``/dev/null``, every other descriptor but ``keep_fds`` closed) and return its pid; this
    process goes on at once. The grandchild never returns into the caller's code: it exits when
    ``work`` ends."""
    keep = sorted(set(int(fd) for fd in keep_fds))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os.waitpid(pid, 0)
        with os.fdopen(read_fd, "r") as handle:
            text = handle.read().strip()
        return int(text) if text.isdigit() else 0
    # the first child: a new session, then the grandchild that does the work
    try:
        os.close(read_fd)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(write_fd, str(grandchild).encode("ascii"))
            os._exit(0)
        os.close(write_fd)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        low = 3  # release the Ansible connection: no inherited pipe or file stays open
        for fd in keep + [os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024]:
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        try:
            work()
        finally:
            os._exit(0)
    except BaseException:  # never back into the module's code from a child
        os._exit(1)
    return 0  # pragma: no cover - never reached


def start(ports: t.Sequence[int], paths: t.Sequence[str], probe_id: str,
          port_max: int = DEFAULT_PORT_MAX, lifetime_s: float = DEFAULT_LIFETIME_S,
          address: str = "", run_detached: t.Callable[..., int] = detach) -> dict[str, t.Any]:
    """The destination's half: bind the listeners, write the markers, and leave a detached
    process answering probes and removing the markers at its end.

    :returns: ``{probe_id, ports: [{requested, port, state, reason}], markers: [{dir, path,
        state, reason}], pid, lifetime_s}`` (``pid`` 0 when nothing needed a process).
    """
    check_probe_id(probe_id)
    sockets, held = open_listeners(ports, port_max, address)
    try:
        markers = make_markers(paths, probe_id)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    created = [m for m in markers if m["state"] == "created"]

    def work() -> None:
        try:
            if sockets:
                serve(sockets, probe_id, lifetime_s)
            elif created:
                time.sleep(float(lifetime_s))
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
            remove_markers(created, probe_id)

    pid = run_detached(work, [sock.fileno() for sock in sockets]) if (sockets or created) else 0
    for sock in sockets:  # the child holds them now
        sock.close()
    return {"probe_id": probe_id, "ports": held, "markers": markers, "pid": pid,
            "lifetime_s": float(lifetime_s)}


# --------------------------------------------------------------------------------------------
# The source's half
# --------------------------------------------------------------------------------------------

def probe_port(address: str, port: int, probe_id: str | None, timeout_s: float) -> str:
    """Connect to ``address:port``; with ``probe_id``, say hello and read the listener's answer.

    :returns: ``open`` (connected; with ``probe_id``: the kvmops listener answered with it),
        ``open_other`` (connected, but no such answer), ``refused`` (RST), ``timeout`` (no
        answer within ``timeout_s``) or ``unreachable`` (no route, network down).
    """
    try:
        conn = socket.create_connection((address.strip("[]"), int(port)), timeout=timeout_s)
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        if err.errno == errno.ECONNREFUSED:
            return "refused"
        if err.errno == errno.ETIMEDOUT:
            return "timeout"
        return "unreachable"
    with conn:
        if probe_id is None:
            return "open"
        conn.settimeout(LINE_TIMEOUT_S)
        try:
            conn.sendall(("%s %s\n" % (HELLO, probe_id)).encode("ascii"))
            answer = _read_line(conn)
        except OSError:
            return "open_other"
    parts = answer.split()
    return "open" if parts[:2] == [ACK, probe_id] else "open_other"


def marker_seen(entry: dict[str, t.Any], probe_id: str) -> bool:
    """The marker of ``entry`` (made on the other host) is here, with its line."""
    path = entry.get("path")
    if not path or os.path.basename(path) != MARKER_PREFIX + probe_id:
        return False
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return handle.read(256) == marker_line(probe_id)
    except OSError:
        return False


def probe_link(address: str, port: int, probe_id: str, timeout_s: float, seconds: float = STREAM_MAX_S,
               max_bytes: int = STREAM_MAX_BYTES,
               clock: t.Callable[[], float] = time.monotonic) -> tuple[str, dict[str, t.Any] | None]:
    """The port's probe (:func:`probe_port`) that also measures the link: after the listener's
    answer, stream zeros to it for ``seconds`` or ``max_bytes`` (each at most the stream's bounds),
    shut the sending side and read the listener's ``KVMOPS-RATE`` line.

    :returns: ``(result, link)``: ``result`` as :func:`probe_port`; ``link`` ``{bps, bytes,
        seconds, port}`` (what the listener received and over what time, ``bps`` from
        :func:`link_rate`), or None when the port is not open to this probe or no rate came back
        (the stream then says nothing about the link).
    """
    try:
        conn = socket.create_connection((address.strip("[]"), int(port)), timeout=timeout_s)
    except ConnectionRefusedError:
        return "refused", None
    except socket.timeout:
        return "timeout", None
    except OSError as err:
        if err.errno == errno.ECONNREFUSED:
            return "refused", None
        if err.errno == errno.ETIMEDOUT:
            return "timeout", None
        return "unreachable", None
    seconds = min(float(seconds), STREAM_MAX_S)
    max_bytes = min(int(max_bytes), STREAM_MAX_BYTES)
    with conn:
        conn.settimeout(LINE_TIMEOUT_S)
        try:
            conn.sendall(("%s %s %d %d\n" % (STREAM, probe_id, max_bytes, int(seconds * 1000))).encode("ascii"))
            answer = _read_line(conn)
        except OSError:
            return "open_other", None
        if answer.split()[:2] != [ACK, probe_id]:
            return "open_other", None
        zeros = bytes(_CHUNK)
        sent = 0
        start = clock()
        try:
            while sent < max_bytes and clock() - start < seconds:
                sent += conn.send(zeros[:min(_CHUNK, max_bytes - sent)])
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(LINE_TIMEOUT_S + seconds)
            got = parse_rate(_read_line(conn))
        except OSError:
            return "open", None
    if got is None:
        return "open", None
    bps = link_rate(*got)
    if bps is None:
        return "open", None
    return "open", {"bps": round(bps, 1), "bytes": got[0], "seconds": round(got[1], 3), "port": int(port)}
