# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one libvirt client of kvmops.migration.

Opens a connection once per module run and closes it on exit (remote ones with libvirt's event
loop and client keepalive), several at once (:func:`connections`); looks a domain up by name or
UUID (:func:`find_domain`, :func:`lookup_domain`); tells a libvirt error from others, real or of
a fake namespace (:func:`is_libvirt_error`, :func:`binding`), and turns it into
:class:`KvmopsError` with an operator message, explaining the known failures
(:func:`explain_failure`); names domain states (:func:`state_name`), versions
(:func:`version_text`, :func:`version_or_unknown`) and a connection's URI (:func:`uri_of`).

libvirt-python is imported lazily so that pure-logic code and unit tests do not need it;
modules check :data:`HAS_LIBVIRT` and call ``missing_required_lib('libvirt-python')`` with
:data:`LIBVIRT_IMPORT_ERROR`.

Relies on: libvirt-python ``libvirt.open`` (virConnectOpen), ``lookupByName``/
``lookupByUUIDString`` (virDomainLookupBy*), https://libvirt.org/uri.html for URIs.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import typing as t
from urllib.parse import urlsplit

from ansible_collections.kvmops.migration.plugins.module_utils._errors import KvmopsError

try:
    import libvirt  # type: ignore[import-not-found]
    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the host
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = str(exc)

DEFAULT_URI = "qemu:///system"

#: Keepalive of remote connections (virConnectSetKeepAlive): a probe every 5 s, the connection
#: is closed after 6 unanswered ones (about 30 s). Without it, a call on a connection whose
#: network was cut silently blocks until TCP gives up (15 min and more).
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 6

_EVENT_LOOP_LOCK = threading.Lock()
_EVENT_LOOP: list[threading.Thread] = []


def _ignore_libvirt_errors(_ctx: t.Any, _err: t.Any) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


def libvirt_error_detail(err: BaseException) -> str:
    """Return libvirt's own message of ``err`` (``get_error_message()``) or ``str(err)``."""
    getter = getattr(err, "get_error_message", None)
    if callable(getter):
        text = getter()
        if text:
            return str(text)
    return str(err)


def binding(lv: t.Any = None) -> t.Any:
    """The libvirt namespace to use: ``lv`` (tests pass a fake) or the real binding.

    :raises KvmopsError: ``lv`` is None and libvirt-python is not installed.
    """
    if lv is not None:
        return lv
    if not HAS_LIBVIRT:
        raise KvmopsError("libvirt-python is not installed on this host: install python3-libvirt "
                          "(Debian/Ubuntu) or libvirt-python (pip).", detail=LIBVIRT_IMPORT_ERROR)
    return libvirt


def const(lv: t.Any, name: str) -> t.Any:
    """``libvirt.<name>`` or None when this binding lacks it."""
    return getattr(lv, name, None)


def is_libvirt_error(err: BaseException, lv: t.Any = None) -> bool:
    """True when ``err`` is the ``libvirtError`` of namespace ``lv`` (a fake of the tests), or
    of the real binding when ``lv`` is None."""
    cls = getattr(lv if lv is not None else libvirt, "libvirtError", None)
    return isinstance(cls, type) and issubclass(type(err), cls)


def libvirt_error_code(err: BaseException) -> int | None:
    """libvirt's error code (``VIR_ERR_*``) of ``err``, or None."""
    getter = getattr(err, "get_error_code", None)
    return getter() if callable(getter) else None


@contextlib.contextmanager
def libvirt_errors(action: str, host: str | None = None) -> t.Iterator[None]:
    """Turn a ``libvirtError`` raised inside the block into :class:`KvmopsError`.

    :param action: what was being done, written for the operator ("look up domain vm1").
    :param host: where (a URI or host name), added to the message.
    :raises KvmopsError: with ``detail`` set to libvirt's message.
    """
    try:
        yield
    except Exception as err:  # only libvirt errors are translated; others propagate
        if not is_libvirt_error(err):
            raise
        where = " on %s" % host if host else ""
        raise KvmopsError("Could not %s%s." % (action, where), detail=libvirt_error_detail(err)) from err


def open_connection(uri: str = DEFAULT_URI, readonly: bool = False) -> t.Any:
    """Open a libvirt connection.

    :param uri: a libvirt URI, e.g. ``qemu:///system`` or ``qemu+ssh://root@hostb/system``.
    :param readonly: open read-only (virConnectOpenReadOnly).
    :returns: a ``libvirt.virConnect``.
    :raises KvmopsError: libvirt-python missing, or the connection failed (names the URI and
        the usual fixes).
    """
    binding()
    libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
    remote = is_remote_uri(uri)
    if remote:
        _start_event_loop()
    try:
        conn = libvirt.openReadOnly(uri) if readonly else libvirt.open(uri)
    except libvirt.libvirtError as err:
        detail = libvirt_error_detail(err)
        raise KvmopsError(connection_failure_message(uri, detail), detail=detail,
                          values={"uri": uri, "cause": classify_failure(detail)}) from err
    if remote:
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def is_remote_uri(uri: str) -> bool:
    """True for a URI with a host part (``qemu+ssh://root@hostb/system``), False for a local
    one (``qemu:///system``)."""
    rest = uri.split("://", 1)[1] if "://" in uri else ""
    return bool(rest) and not rest.startswith("/")


def _start_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread, once per process:
    client keepalive (virConnectSetKeepAlive) needs it. Must run before the first connection
    is opened (https://libvirt.org/html/libvirt-libvirt-event.html)."""
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP:
            return
        try:
            libvirt.virEventRegisterDefaultImpl()
        except libvirt.libvirtError:  # pragma: no cover - only when another loop is registered
            return

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt failure
                    return

        thread = threading.Thread(target=run, name="kvmops-libvirt-events", daemon=True)
        thread.start()
        _EVENT_LOOP.append(thread)


@contextlib.contextmanager
def connection(uri: str = DEFAULT_URI, readonly: bool = False) -> t.Iterator[t.Any]:
    """Context manager around :func:`open_connection` that always closes the connection."""
    conn = open_connection(uri, readonly=readonly)
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            conn.close()


@contextlib.contextmanager
def connections(uris: t.Iterable[str],
                connect: t.Callable[[str], t.ContextManager[t.Any]] = connection) -> t.Iterator[dict[str, t.Any]]:
    """One connection per distinct URI (``connect(uri)``, :func:`connection` by default) as
    ``{uri: conn}``; all are closed on exit, also when a later one fails to open."""
    with contextlib.ExitStack() as stack:
        yield {uri: stack.enter_context(connect(uri)) for uri in dict.fromkeys(uris)}


def _domain_or_none(conn: t.Any, method: str, key: str, lv: t.Any) -> t.Any:
    """``conn.<method>(key)``, None when libvirt says there is no such domain; any other error
    propagates as it is."""
    try:
        return getattr(conn, method)(key)
    except Exception as err:
        if is_libvirt_error(err, lv) and libvirt_error_code(err) == getattr(
                lv if lv is not None else libvirt, "VIR_ERR_NO_DOMAIN", None):
            return None
        raise


def _lookups(key: str, by: str | None) -> list[str]:
    """The lookup methods for ``key``: by UUID first when it looks like one, then by name."""
    if by == "name":
        return ["lookupByName"]
    if by == "uuid":
        return ["lookupByUUIDString"]
    return (["lookupByUUIDString"] if looks_like_uuid(key) else []) + ["lookupByName"]


def _find(conn: t.Any, key: str, by: str | None, lv: t.Any, failure: t.Callable[[], str]) -> t.Any:
    for method in _lookups(key, by):
        try:
            dom = _domain_or_none(conn, method, key, lv)
        except Exception as err:
            if not is_libvirt_error(err, lv):
                raise
            raise KvmopsError(failure(), detail=libvirt_error_detail(err)) from err
        if dom is not None:
            return dom
    return None


def find_domain(conn: t.Any, key: str, by: str | None = None, lv: t.Any = None) -> t.Any:
    """A domain by ``key``, or None when there is none.

    :param by: ``name``, ``uuid``, or None: by UUID when ``key`` looks like one, then by name.
    :param lv: the libvirt namespace (a fake in the tests), the real binding when None.
    :raises KvmopsError: another libvirt failure, naming the domain and the connection's URI.
    """
    return _find(conn, key, by, lv,
                 lambda: "Could not look up domain %s on %s." % (key, uri_of(conn, "the host")))


def lookup_domain(conn: t.Any, name_or_uuid: str, required: bool = True) -> t.Any:
    """Find a domain by name, or by UUID when the text is a UUID.

    :returns: a ``libvirt.virDomain`` or None when absent and ``required`` is False.
    :raises KvmopsError: domain absent (when required) or another libvirt failure.
    """
    text = name_or_uuid.strip()
    dom = _find(conn, text, None, None, lambda: "Could not look up domain %s." % text)
    if dom is None and required:
        raise KvmopsError("Domain %s is not defined on %s: check the guest name (virsh list --all)."
                          % (text, uri_of(conn)))
    return dom


def name_of(obj: t.Any, default: str = "?") -> str:
    """``obj.name()`` of a libvirt domain or storage pool, or ``default`` when even that fails
    (a name only for a message)."""
    try:
        return str(obj.name())
    except Exception:  # a name only for the message
        return default


def uri_of(conn: t.Any, default: str | None = "this host") -> str | None:
    """``conn.getURI()``, or ``default`` when even that fails (a broken connection still
    deserves a message)."""
    try:
        return str(conn.getURI())
    except Exception:  # a broken connection still deserves a message
        return default


def is_alive(conn: t.Any) -> bool:
    """``conn.isAlive()``; a connection that cannot even say so counts as dead."""
    try:
        return bool(conn.isAlive())
    except Exception:
        return False


def looks_like_uuid(text: str) -> bool:
    """True for the 8-4-4-4-12 hexadecimal form of a UUID."""
    parts = text.split("-")
    return len(text) == 36 and [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(
        c in "0123456789abcdefABCDEF" for c in text.replace("-", ""))


def agent_command(dom: t.Any, command: dict[str, t.Any], timeout_s: int, lv: t.Any = None) -> str:
    """Send one command to the QEMU guest agent of ``dom`` (``virDomainQemuAgentCommand``, in
    libvirt-python's ``libvirt_qemu`` module; a fake namespace ``lv`` may carry its own
    ``qemuAgentCommand``) and return the reply text unparsed: the guest writes it (hostile input).

    :param command: the agent command, e.g. ``{"execute": "guest-ping"}``.
    :param timeout_s: seconds to wait for the answer.
    :raises libvirtError: no agent channel, the agent is not connected or did not answer.
    """
    send = getattr(lv, "qemuAgentCommand", None)
    if send is None:
        import libvirt_qemu  # type: ignore[import-not-found]  # pylint: disable=import-outside-toplevel
        send = libvirt_qemu.qemuAgentCommand
    return str(send(dom, json.dumps(command, separators=(",", ":")), int(timeout_s), 0) or "")


# --------------------------------------------------------------------------------------------
# Versions and domain states
# --------------------------------------------------------------------------------------------

def version_text(number: int | None) -> str | None:
    """libvirt's packed version (major * 1000000 + minor * 1000 + micro) as ``M.m.u``, None
    for None."""
    if number is None:
        return None
    return "%d.%d.%d" % (number // 1000000, (number // 1000) % 1000, number % 1000)


def version_or_unknown(number: int | None) -> str:
    """:func:`version_text`, ``unknown`` when the host did not say (None or 0)."""
    return version_text(number or None) or "unknown"


def binding_version(lv: t.Any) -> str:
    """``M.m.u`` of ``lv.getVersion()`` (the libvirt library), ``unknown`` when it cannot say."""
    getter = getattr(lv, "getVersion", None)
    if not callable(getter):
        return "unknown"
    try:
        number = int(getter())
    except Exception:  # a broken binding still deserves a message
        return "unknown"
    return version_text(number) or "unknown"


#: virDomainState: the libvirt constant, its number (stable ABI) and our name for it.
_STATES = (
    ("VIR_DOMAIN_NOSTATE", 0, "nostate"), ("VIR_DOMAIN_RUNNING", 1, "running"),
    ("VIR_DOMAIN_BLOCKED", 2, "blocked"), ("VIR_DOMAIN_PAUSED", 3, "paused"),
    ("VIR_DOMAIN_SHUTDOWN", 4, "shutdown"), ("VIR_DOMAIN_SHUTOFF", 5, "shutoff"),
    ("VIR_DOMAIN_CRASHED", 6, "crashed"), ("VIR_DOMAIN_PMSUSPENDED", 7, "pmsuspended"),
)

#: virDomainState numbers to names, for code that reads them without the binding.
STATE_NAMES = {number: name for _const, number, name in _STATES}


def state_name(lv: t.Any, state: int) -> str:
    """Name of a ``VIR_DOMAIN_*`` state number (``running``, ``paused``, ``shutoff`` ...) by the
    constants of namespace ``lv``; ``unknown(<n>)`` for another number."""
    for const, _number, name in _STATES:
        if getattr(lv, const, None) == state:
            return name
    return "unknown(%s)" % state


# --------------------------------------------------------------------------------------------
# Why a libvirt call or a migration failed: the one classification of libvirt's error texts
# --------------------------------------------------------------------------------------------

#: ``(kind, pattern, cause and fix)`` over libvirt's error text (with the ssh, virt-ssh-helper,
#: nc or QEMU text libvirt wraps, e.g. "Cannot recv data: Host key verification failed.:
#: Connection reset by peer"); the first match wins, so the faults of the connection between the
#: hosts come before the generic "the connection broke". ``{host}`` is the remote host,
#: ``{user}`` the remote user of a qemu+ssh URI, ``{guest}`` the domain. The texts are those of
#: libvirt 9-11 (virnetsocket.c, remote_driver.c, qemu_migration.c), OpenSSH 9 and QEMU 7-10.
FAILURE_CAUSES: tuple[tuple[str, str, str], ...] = (
    ("host_key_untrusted",
     r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|"
     r"No \S+ host key is known for|authenticity of host .* can't be established",
     "the source does not trust the SSH host key of {host} (not in root's known_hosts there, or "
     "changed since it was pinned). Pin it with the kvm_host role: ansible-playbook "
     "playbooks/prepare_hosts.yml --tags kvm_host_ssh (task 'Pin the other hypervisors' host keys', "
     "kvm_host_ssh_trust: true), which reads it from {host}'s own host key file; if {host} was "
     "reinstalled, first drop the old key on the source: ssh-keygen -R {host}"),
    ("key_refused",
     r"Permission denied \((?:publickey|gssapi|password|keyboard)[^)]*\)|Permission denied, please "
     r"try again|Too many authentication failures|No more authentication methods",
     "{host} refused the source's SSH key for user {user}. Authorise it with the kvm_host role: "
     "ansible-playbook playbooks/prepare_hosts.yml --tags kvm_host_ssh (task 'Authorise the other "
     "hypervisors' keys, from the group's addresses only': the key is accepted only from the "
     "group's inventory addresses, so add the address the source connects from to "
     "kvm_host_ssh_extra_from when it is another one); check with: ssh -o BatchMode=yes "
     "{user}@{host} true"),
    ("socket_denied",
     r"(?:libvirt|virt[a-z]+d)-sock'?: Permission denied|unix connect failed: Permission denied|"
     r"no polkit agent available|Authorization requires authentication",
     "user {user} logged in on {host}, but libvirt's socket there refused it (permission denied on "
     "/var/run/libvirt/libvirt-sock or virtqemud-sock): connect as root (dest_user / "
     "migrate_guest_dest_user: root, the default), or add {user} to the libvirt group on {host} "
     "(usermod -aG libvirt {user})"),
    ("libvirtd_down",
     r"(?:libvirt|virt[a-z]+d)-sock'?: (?:No such file or directory|Connection refused)|"
     r"unix connect failed: (?:No such file or directory|Connection refused)|"
     r"Ncat: (?:No such file or directory|Connection refused)",
     "libvirt does not run on {host} (its socket is missing or refuses connections): start it "
     "there (systemctl enable --now libvirtd, or virtqemud.socket on hosts with the modular "
     "daemons); the kvm_host role's task 'Start and enable the libvirt daemon' does it "
     "(kvm_host_manage_service: true)"),
    ("tls_not_listening",
     r"unable to connect to server at '[^']*:16514': Connection refused",
     "nothing listens for qemu+tls on {host} port 16514: enable the TLS socket there (systemctl "
     "enable --now libvirtd-tls.socket); the kvm_host role does with kvm_host_tls: true (task "
     "'Listen for qemu+tls (socket activation)')"),
    ("name_unresolved",
     r"Could not resolve hostname|Name or service not known|Temporary failure in name resolution|"
     r"Unable to resolve address|address resolution failed|No address associated with hostname",
     "the name {host} does not resolve from the source: give the destination's inventory address "
     "(ansible_host) or add the name to DNS or /etc/hosts on the source"),
    ("ssh_unreachable",
     r"ssh: connect to host \S+ port \d+: (?:Connection refused|Connection timed out|No route to "
     r"host|Network is unreachable)",
     "the source cannot open an SSH connection to {host}: start sshd there and let the source "
     "reach its port (firewall, routing)"),
    ("unsafe_not_shared",
     r"Migration without shared storage is unsafe",
     "libvirt refused the move as unsafe: a writable disk that is not copied is on storage the "
     "source's libvirt does not know as shared. It judges by the filesystem type (NFS, GFS2, "
     "OCFS2, CephFS, GPFS, BeeGFS ... are shared; ext4, xfs or a bind mount are not, even when "
     "both hosts see the same files). If the directory really is shared, declare it in "
     "shared_filesystems in /etc/libvirt/qemu.conf on the source and restart libvirt there; "
     "otherwise copy the disk (leave it out of shared_disks, copy_storage: all)"),
    ("unsafe_cache",
     r"Migration may lead to data corruption if disks use cache",
     "libvirt refused the move as unsafe: a disk on shared storage uses a cache mode other than "
     "none or directsync, and this QEMU cannot drop the destination's page cache at the "
     "switch-over. Set cache='none' on that disk (virsh edit {guest}; it applies at the next cold "
     "boot), or copy the disk instead"),
    ("no_space",
     r"No space left on device|ENOSPC|Disk quota exceeded",
     "the destination ran out of space while the disks were copied: free space on {host} (the "
     "filesystem holding the guest's images) and run again"),
    ("connection_broke",
     r"client socket is closed|End of file while reading data|Cannot recv data|"
     r"keepalive timeout|connection closed|Connection reset by peer|Broken pipe",
     "the connection to {host} broke during the migration: libvirtd there stopped or crashed, or "
     "the network between the hosts failed. Check that libvirtd runs on {host} and that the hosts "
     "reach each other, then run again"),
    ("data_ports_blocked",
     r"Connection timed out|No route to host|Network is unreachable|Connection refused",
     "the hosts could not reach each other on the migration ports: check the network and the "
     "firewall between them (libvirt's migration ports 49152-49215), then run again"),
    ("qemu_stopped",
     r"qemu unexpectedly closed the monitor|End of file from qemu monitor|"
     r"QEMU unexpectedly closed|Domain not found",
     "QEMU stopped on {host} while receiving the guest: see /var/log/libvirt/qemu/{guest}.log on "
     "{host}"),
    ("cancelled",
     r"operation aborted|migration out job: canceled|job .* canceled|Operation canceled",
     "the migration job was cancelled on the source (virsh domjobabort or another tool)"),
)

#: kinds of :data:`FAILURE_CAUSES` that are faults of the libvirt connection itself
CONNECTION_CAUSES = ("host_key_untrusted", "key_refused", "socket_denied", "libvirtd_down",
                     "tls_not_listening", "name_unresolved", "ssh_unreachable")


def classify_failure(detail: str | None) -> str | None:
    """The kind of :data:`FAILURE_CAUSES` whose pattern matches libvirt's error text, or None."""
    for kind, pattern, _cause in FAILURE_CAUSES:
        if re.search(pattern, detail or "", re.IGNORECASE):
            return kind
    return None


def explain_failure(detail: str | None, host: str, guest: str = "the guest",
                    user: str = "root") -> str | None:
    """The cause and the fix of a failure, for the operator, from libvirt's error text.

    :param detail: libvirt's message (``libvirtError.get_error_message()``).
    :param host: the remote host as the operator named it (the destination).
    :returns: a sentence naming the cause and the fix, or None when the text is none of
        :data:`FAILURE_CAUSES` (the caller shows the detail beside its own words).
    """
    kind = classify_failure(detail)
    for name, _pattern, cause in FAILURE_CAUSES:
        if name == kind:
            return cause.format(host=host, guest=guest, user=user or "root")
    return None


def connection_failure_message(uri: str, detail: str | None) -> str:
    """The message of a failed ``virConnectOpen`` of ``uri``: the cause and its fix when
    :func:`explain_failure` knows the text, else what to check."""
    parts = urlsplit(uri) if "://" in uri else None
    host = (parts.hostname if parts else None) or "this host"
    user = (parts.username if parts else None) or "root"
    kind = classify_failure(detail)
    if kind in CONNECTION_CAUSES or kind == "connection_broke":
        if kind == "connection_broke":
            return ("Could not connect to libvirt at %s: the connection was closed while it was set up "
                    "(for qemu+ssh: ssh to %s failed or libvirt's helper there exited; run 'virsh -c %s "
                    "list' on the source to see why)." % (uri, host, uri))
        return "Could not connect to libvirt at %s: %s." % (uri, explain_failure(detail, host, user=user))
    return ("Could not connect to libvirt at %s: check that libvirtd runs there and that this user "
            "may use it (for qemu+ssh: key login and libvirt's socket on the remote host)." % uri)
