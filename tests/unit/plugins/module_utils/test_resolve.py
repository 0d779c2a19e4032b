"""The one name resolver (_checks_network.resolve): the pre-flight's (no address: []) and
_sockets.sever's (strict: the resolver's error)."""

from __future__ import annotations

import socket

import pytest

from ansible_collections.kvmops.migration.plugins.module_utils import _checks_network


@pytest.fixture(name="names")
def fixture_names(monkeypatch):
    """getaddrinfo of a host whose resolver knows hostb only (twice, as for two socket types)."""
    asked = []

    def getaddrinfo(host, port, proto=0):
        asked.append(host)
        if host == "hostb":
            return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", ("198.18.0.2", 0)),
                    (socket.AF_INET6, socket.SOCK_STREAM, proto, "", ("fd00::2", 0, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, proto, "", ("198.18.0.2", 0))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_gives_its_addresses_sorted_once(names):
    assert _checks_network.resolve("hostb") == ["198.18.0.2", "fd00::2"]
    assert _checks_network.resolve("hostb", strict=True) == ["198.18.0.2", "fd00::2"]


@pytest.mark.parametrize("literal, address", [("198.18.0.2", "198.18.0.2"), ("[fd00::2]", "fd00::2"),
                                              ("fd00:0::2", "fd00::2")])
def test_an_address_literal_is_itself_without_asking_the_resolver(names, literal, address):
    assert _checks_network.resolve(literal) == [address]
    assert names == []


def test_a_name_that_does_not_resolve(names):
    assert _checks_network.resolve("nowhere") == []
    with pytest.raises(OSError, match="Name or service not known"):
        _checks_network.resolve("nowhere", strict=True)
