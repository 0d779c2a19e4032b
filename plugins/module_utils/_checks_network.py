# -*- coding: utf-8 -*-
# Copyright (c) kvmops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pre-flight checks of the network between and on the hosts, one small function per check,
each returning one finding or a list of findings (:mod:`_findings`) for
:func:`_preflight.report`.

The guest's interfaces on the destination (bridge, network or direct device, C08), the names
the move uses (they resolve from the source, not to a loopback address, C09), the libvirt
transport port and the migration and NBD data ports, and the source's TLS client files of a
``qemu+tls`` connection. The probes the runner injects by default (:class:`_preflight.Probes`)
are here too: :func:`resolve`, :func:`tcp_probe`, :func:`is_local_address`.

What is honest about ports
--------------------------
The destination QEMU listens on its migration and NBD ports (49152-49215 by default,
``migration_port_min``/``max`` in qemu.conf) only while an incoming migration runs. With
``dest_probe`` (the ``preflight_dest`` module run on the destination just before, see
:mod:`_probe`) a kvmops listener holds the very port the move will get, so the answer is
exact: ``open``, ``closed`` (a reset although the listener holds it: a REJECT rule) or
``filtered`` (no answer: a DROP rule), and the two blocked ones are errors before anything is
created. Without it a TCP connect proves the route only when something listens: "Connection
refused" means the host answered but a firewall REJECT rule answers the same way, so it is
``ok`` with ``values.verified: false`` and the words "not verifiable until the migration"; no
answer within the timeout is an ``error`` (a dropping firewall dooms the move); an unreachable
network is an ``error``. ``ignore_blocked_ports`` makes these errors warnings. The libvirt
transport port (ssh 22, tls 16514) must accept a connection: that one is verified.

Relies on: libvirt ``virNetworkLookupByName``/``virNetworkIsActive``/
``virNetworkGetBridgeName``, ``virConnectListAllNetworks``, ``virInterfaceLookupByName``/
``virInterfaceIsActive`` (:func:`libvirt_network_lookup`); ``getaddrinfo``, ``bind`` and TCP
``connect`` from the source; https://libvirt.org/uri.html (transport ports);
https://libvirt.org/kbase/tlscerts.html (client files).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import typing as t
from urllib.parse import urlsplit

from ansible_collections.kvmops.migration.plugins.module_utils import _libvirt
from ansible_collections.kvmops.migration.plugins.module_utils._findings import finding


#: the firewall advice of a blocked data port
_OPEN_PORTS = ("open TCP 49152-49215 from the source in the firewall of %s (the kvm_host role does with "
               "kvm_host_firewall: firewalld or ufw; by hand: firewall-cmd --permanent "
               "--add-port=49152-49215/tcp && firewall-cmd --reload, or ufw allow proto tcp to any "
               "port 49152:49215) and in any firewall between the hosts")

#: Client side of a qemu+tls connection, for root (https://libvirt.org/kbase/tlscerts.html).
LIBVIRT_TLS_CLIENT_FILES = ("/etc/pki/CA/cacert.pem", "/etc/pki/libvirt/clientcert.pem",
                            "/etc/pki/libvirt/private/clientkey.pem")


# --------------------------------------------------------------------------------------------
# Networks (C08)
# --------------------------------------------------------------------------------------------

def check_networks(nics: list[dict[str, t.Any]], lookup: t.Callable[[str, str], dict[str, t.Any]],
                   network_map: dict[str, str], host: str) -> list[dict[str, t.Any]]:
    """Every interface's bridge / network / direct device exists (and a network is active) on
    the destination, after ``network_map`` ``{source name: destination name}``.

    :param lookup: ``(kind, name) -> {exists: bool|None, active: bool|None}`` (None: unknown)
        for kind ``bridge``, ``network`` or ``direct``.
    """
    out = []
    for nic in nics:
        kind = {"bridge": "bridge", "network": "network", "direct": "direct"}.get(nic.get("type"))
        name = nic.get("source")
        if kind is None or not name:
            out.append(finding("network", "ok", host, "Interface %s (type %s) needs nothing on %s."
                               % (nic.get("mac"), nic.get("type"), host), mac=nic.get("mac"),
                               type=nic.get("type")))
            continue
        dst_name = network_map.get(name, name)
        state = lookup(kind, dst_name)
        values = {"mac": nic.get("mac"), "type": kind, "source": name, "dest_source": dst_name,
                  "exists": state.get("exists"), "active": state.get("active")}
        label = "%s %s%s" % (kind, dst_name, " (mapped from %s)" % name if dst_name != name else "")
        if state.get("exists") is None:
            out.append(finding("network", "warning", host, "Could not verify %s for NIC %s on %s: %s"
                               % (label, nic.get("mac"), host, state.get("why", "unknown")), **values))
        elif not state["exists"]:
            out.append(finding("network", "error", host,
                               "The %s of NIC %s does not exist on %s: create it there, or map it "
                               "with network_map {%s: <name on %s>}." % (
                                   label, nic.get("mac"), host, name, host), **values))
        elif state.get("active") is False:
            out.append(finding("network", "error", host,
                               "The %s of NIC %s is not active on %s: start it there (virsh "
                               "net-start %s; net-autostart)." % (label, nic.get("mac"), host, dst_name),
                               **values))
        else:
            out.append(finding("network", "ok", host, "The %s of NIC %s is present on %s." % (
                label, nic.get("mac"), host), **values))
    return out


def libvirt_network_lookup(conn: t.Any, lv: t.Any,
                           host_interfaces: list[str] | None = None) -> t.Callable[[str, str], dict[str, t.Any]]:
    """A :func:`check_networks` lookup over a destination connection: networks by
    ``networkLookupByName``/``isActive``; bridges and direct devices in ``host_interfaces``
    (the destination's ``ansible_interfaces`` fact, when the caller gathered it), else by
    ``interfaceLookupByName`` (libvirt's interface driver, absent on many hosts) or as the
    bridge of an active network."""
    def lookup(kind: str, name: str) -> dict[str, t.Any]:
        if kind == "network":
            try:
                net = conn.networkLookupByName(name)
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                if _libvirt.libvirt_error_code(err) == getattr(lv, "VIR_ERR_NO_NETWORK", None):
                    return {"exists": False, "active": None}
                return {"exists": None, "why": _libvirt.libvirt_error_detail(err)}
            try:
                return {"exists": True, "active": bool(net.isActive())}
            except Exception as err:
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
                return {"exists": True, "active": None, "why": _libvirt.libvirt_error_detail(err)}
        if host_interfaces is not None:
            return {"exists": name in host_interfaces, "active": None}
        try:
            iface = conn.interfaceLookupByName(name)
            return {"exists": True, "active": bool(iface.isActive())}
        except Exception as err:
            if not _libvirt.is_libvirt_error(err, lv):
                raise
            code = _libvirt.libvirt_error_code(err)
            if code != getattr(lv, "VIR_ERR_NO_INTERFACE", None):
                return {"exists": None, "why": "libvirt cannot list host interfaces (%s)"
                        % _libvirt.libvirt_error_detail(err)}
        if kind == "bridge":
            try:
                for net in conn.listAllNetworks(0):
                    if net.bridgeName() == name:
                        return {"exists": True, "active": bool(net.isActive())}
            except Exception as err:  # a network without a bridge (macvtap, hostdev) has no name
                if not _libvirt.is_libvirt_error(err, lv):
                    raise
        return {"exists": False, "active": None}
    return lookup


# --------------------------------------------------------------------------------------------
# Names and addresses (C09)
# --------------------------------------------------------------------------------------------

def resolve(name: str, strict: bool = False) -> list[str]:
    """The addresses of ``name`` from this host, sorted, each once: an address literal (bracketed
    or not) is itself, a name is what ``getaddrinfo`` gives; [] when the name does not resolve.
    The one resolver of the collection (the pre-flight's names, ``_sockets.sever``'s peer).

    :param strict: raise instead of returning [].
    :raises OSError: (``socket.gaierror``) with ``strict``, when the name does not resolve.
    """
    host = name.strip("[]")
    with contextlib.suppress(ValueError):
        return [str(ipaddress.ip_address(host))]
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        if strict:
            raise
        return []
    return sorted({str(info[4][0]) for info in infos})


def is_loopback(address: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    return False


def is_local_address(address: str) -> bool:
    """True when ``address`` belongs to this host: binding a socket to it succeeds
    (EADDRNOTAVAIL otherwise). Nothing listens; the socket is closed at once."""
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.is_loopback:
            return True
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((str(ip), 0))
            except OSError:
                return False
            return True
    return False


def is_ip(text: str) -> bool:
    """True when ``text`` is an IPv4 or IPv6 address literal (blanks and brackets around it allowed)."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(text.strip().strip("[]"))
        return True
    return False


def check_names(names: dict[str, bool], resolver: t.Callable[[str], list[str]], host: str
                ) -> list[dict[str, t.Any]]:
    """Names resolve from the source to non-loopback addresses (case C09).

    :param names: name -> True when this tool's migration uses it (dest_host, the URI's host:
        error when it fails) or False when only other tools would (the destination's own
        host name, which ``virsh migrate`` without ``--migrateuri`` uses: warning).
    """
    out = []
    for name, used in names.items():
        if not name:
            continue
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(name.strip("[]"))
            continue  # a literal address needs no resolution
        addresses = resolver(name)
        loop = [a for a in addresses if is_loopback(a)]
        values = {"name": name, "addresses": addresses, "used_by_migration": used}
        status = "error" if used else "warning"
        why = ("" if used else " This migration passes explicit migration and disk URIs built from "
               "dest_host, so it does not depend on it; 'virsh migrate' without --migrateuri does "
               "and fails with \"address resolution failed for %s:49152\"." % name)
        if not addresses:
            out.append(finding("name_resolution", status, host,
                               "%s does not resolve from the source: add it to DNS or /etc/hosts on "
                               "the source.%s" % (name, why), **values))
        elif loop:
            out.append(finding("name_resolution", status, host,
                               "%s resolves to the loopback address %s from the source (an "
                               "/etc/hosts line like '127.0.1.1 %s' is the classic cause): map it to "
                               "the destination's real address.%s" % (name, ", ".join(loop), name, why),
                               **values))
        else:
            out.append(finding("name_resolution", "ok", host, "%s resolves to %s." % (
                name, ", ".join(addresses)), **values))
    return out


# --------------------------------------------------------------------------------------------
# Ports and TLS files
# --------------------------------------------------------------------------------------------

def uri_hostname(uri: str) -> str | None:
    """The host of a libvirt URI, None when it names none or does not parse."""
    with contextlib.suppress(ValueError):
        return urlsplit(uri).hostname
    return None


def transport_port(uri: str) -> tuple[str, int | None]:
    """``(transport, port)`` of a libvirt URI: the transport after ``+`` (``ssh``, ``tls``, ...;
    ``tls`` for a remote URI without one, ``""`` for a local one) and the URI's port, else the
    transport's default (None when it has none)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ("tls" if parts.hostname else "")
    default = {"ssh": 22, "libssh": 22, "libssh2": 22, "tls": 16514, "tcp": 16509}.get(scheme)
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return scheme, port


def tcp_probe(address: str, port: int, timeout_s: float) -> str:
    """``open`` (a listener accepted), ``refused``, ``timeout`` or ``unreachable``."""
    try:
        with socket.create_connection((address.strip("[]"), port), timeout=timeout_s):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED,):
            return "refused"
        if err.errno in (errno.ETIMEDOUT,):
            return "timeout"
        return "unreachable"


def check_transport_port(address: str, port: int, what: str, result: str, host: str
                         ) -> dict[str, t.Any]:
    """The libvirt transport port (ssh or tls) must accept a connection from the source."""
    values = {"address": address, "port": port, "result": result}
    if result == "open":
        return finding("transport_port", "ok", host, "%s port %d on %s accepts connections from the "
                       "source." % (what, port, address), **values)
    return finding("transport_port", "error", host,
                   "%s port %d on %s is not reachable from the source (%s): start the service there "
                   "and open the port in its firewall." % (what, port, address, result), **values)


def check_data_port(address: str, port: int, what: str, result: str, host: str,
                    listener: dict[str, t.Any] | None = None, ignore_blocked: bool = False
                    ) -> dict[str, t.Any]:
    """A migration or NBD port: what can honestly be said (see the module docstring).

    :param result: of :func:`_probe.probe_port` (``open``, ``open_other``, ``refused``,
        ``timeout``, ``unreachable``), or ``unavailable`` when the listener held no port.
    :param listener: the ``preflight_dest`` entry of this port (``{requested, port, state,
        reason}``): a kvmops listener held it, so a reset means a firewall rejects (``closed``)
        and no answer means one drops it (``filtered``). None: a plain connect, where a reset
        is not verifiable (nothing listens before the migration).
    :param ignore_blocked: a closed, filtered or unreachable port is a warning, not an error
        (the operator knows the firewall opens the ports only for the move).
    """
    verified = listener is not None
    shown = (listener or {}).get("port") or port
    label = "%s port %d on %s" % (what, shown, address)
    if listener is not None and listener.get("requested") not in (None, shown):
        label += " (%d is in use there; libvirt takes the next free one)" % listener["requested"]
    state = {"open": "open", "open_other": "other", "refused": "closed", "timeout": "filtered",
             "unreachable": "unreachable", "unavailable": "unavailable"}.get(result, result)
    values = {"address": address, "port": shown, "requested": (listener or {}).get("requested", port),
              "result": result, "state": state, "verified": result == "open",
              "probe": "listener" if verified else "connect"}
    if result == "open":
        return finding("data_port", "ok", host, "%s: %s answered, the route is open." % (
            label, "the kvmops listener" if verified else "a listener"), **values)
    if result == "refused" and not verified:
        return finding("data_port", "ok", host,
                       "%s: the host answered (connection refused), not verifiable until the migration: QEMU "
                       "listens there only during an incoming migration, and a firewall REJECT rule answers "
                       "the same way. Make sure the firewall of %s accepts TCP 49152-49215 from the source."
                       % (label, host), **values)
    if result == "unavailable":
        why = (listener or {}).get("reason") or "no port held"
        status = "error" if why.startswith("every port") else "warning"
        msg = ("%s: not verified, the probe on %s could not listen (%s)%s." % (
            label, host, why, ": libvirt fails the same way ('Unable to find an unused port in range'); "
            "wait for the other incoming migrations to end or widen migration_port_max in qemu.conf"
            if status == "error" else ""))
        return finding("data_port", status, host, msg, **values)
    if result == "open_other":
        msg = ("%s: something answered, but not the kvmops listener that holds the port on %s: a NAT or "
               "proxy sends it elsewhere, so the migration stream would not reach %s's QEMU. Fix the "
               "forwarding, or give dest_host the address the source reaches %s at directly."
               % (label, host, host, host))
    elif result == "refused":
        msg = ("%s is closed: the kvmops listener holds it on %s, yet the connection was reset, so a firewall "
               "rejects it (a REJECT rule). The move would fail after the images were created: %s."
               % (label, host, _OPEN_PORTS % host))
    elif result == "timeout":
        msg = ("%s is filtered: no answer at all (timeout), so a firewall drops it. The move would fail after "
               "the images were created: %s." % (label, _OPEN_PORTS % host))
    else:
        msg = "%s: host unreachable from the source: check routing to %s." % (label, address)
    if ignore_blocked:
        return finding("data_port", "warning", host, "%s (Accepted: ignore_blocked / "
                       "migrate_guest_ignore_blocked_migration_ports is set.)" % msg, **values)
    return finding("data_port", "error", host, msg, **values)


def check_tls_files(files: t.Sequence[str], purpose: str, exists: t.Callable[[str], bool],
                    host: str) -> dict[str, t.Any]:
    """TLS material present on the source (https://libvirt.org/kbase/tlscerts.html)."""
    missing = [f for f in files if not exists(f)]
    values = {"files": list(files), "missing": missing, "purpose": purpose}
    if missing:
        return finding("tls_files", "error", host, "TLS for %s is asked, but %s missing on the source: "
                       "install the CA certificate and this host's client certificate and key there "
                       "(https://libvirt.org/kbase/tlscerts.html)." % (purpose, ", ".join(missing)),
                       **values)
    return finding("tls_files", "ok", host, "TLS files for %s are present on the source (the "
                   "destination's server certificate is checked when it connects)." % purpose, **values)
