"""Attacks on network isolation from inside the sandbox, under both runtimes.

Nothing here sends a packet off this host even if isolation were broken: off-host targets are probed with UDP
connect() (a routing-table lookup that sends nothing) and by reading the kernel's own tables; TCP goes only to
loopback, which inside the sandbox is the sandbox's own.

mcpx's seccomp profile refuses every socket family but AF_UNIX under both runtimes, so inet, netlink, packet and
vsock probes end at socket() with EPERM; where the kernel also offers a file view (/proc/net), that is read too.
"""

from __future__ import annotations

import os
import socket
import textwrap
from typing import Any

import httpx
import pytest

from controller.config import Settings
from tests.conftest import SessionFactory, execute
from tests.security.conftest import Attack

OFF_HOST_V4 = ["1.1.1.1", "169.254.169.254", "10.0.0.1", "172.17.0.1", "192.168.0.1", "100.64.0.1", "8.8.8.8"]
OFF_HOST_V6 = ["2606:4700:4700::1111", "fd00::1", "fe80::1", "::ffff:1.1.1.1", "64:ff9b::101:101", "2001:db8::1"]


def result(reply: dict[str, Any]) -> Any:
    assert reply["error"] is None, reply["error"]
    return reply["result"]


def test_only_loopback_exists_in_every_view_of_the_interfaces(attack: Attack):
    views = result(
        attack(
            textwrap.dedent(
                """
                import errno, os, socket
                lines = lambda path: [line for line in open(path).read().splitlines() if line.strip()]
                def names():
                    try:
                        return sorted(name for _, name in socket.if_nameindex())
                    except OSError as exc:  # glibc asks netlink
                        return errno.errorcode[exc.errno]
                {
                    "if_nameindex": names(),
                    "sys": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
                    "dev": sorted(line.split(":")[0].strip() for line in lines("/proc/net/dev")[2:]),
                    "if_inet6": sorted({line.split()[5] for line in lines("/proc/net/if_inet6")}),
                    "arp": lines("/proc/net/arp")[1:],
                }
                """
            )
        )
    )
    assert views["if_nameindex"] == "EPERM"
    assert views["dev"] == ["lo"]
    assert views["sys"] in (["lo"], None)  # gVisor's sysfs has no class/net at all
    assert set(views["if_inet6"]) <= {"lo"}
    assert views["arp"] == []


def test_the_routing_tables_hold_no_route_off_the_sandbox(attack: Attack):
    tables = result(
        attack(
            textwrap.dedent(
                """
                ipv4 = open("/proc/net/route").read().splitlines()[1:]
                ipv6 = [line.split() for line in open("/proc/net/ipv6_route").read().splitlines()]
                ipv4, [(fields[4], fields[8], fields[9]) for fields in ipv6]
                """
            )
        )
    )
    ipv4, ipv6 = tables
    assert ipv4 == []
    # runc lists the kernel's two default "reject" entries (flag 0x200) on lo; gVisor lists none.
    for next_hop, flags, device in ipv6:
        assert device == "lo"
        assert int(next_hop, 16) == 0
        assert int(flags, 16) & 0x200


def test_no_udp_socket_toward_any_off_host_address_can_even_be_created(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                f"""
                import errno, socket
                def route(family, address):
                    try:
                        probe = socket.socket(family, socket.SOCK_DGRAM)
                    except OSError as exc:
                        return "socket " + errno.errorcode[exc.errno]
                    try:
                        probe.connect((address, 53))  # a routing lookup: nothing is sent
                        return "routed"
                    except OSError as exc:
                        return errno.errorcode.get(exc.errno, str(exc.errno))
                    finally:
                        probe.close()
                outcome = {{a: route(socket.AF_INET, a) for a in {OFF_HOST_V4!r}}}
                outcome.update({{a: route(socket.AF_INET6, a) for a in {OFF_HOST_V6!r}}})
                outcome
                """
            )
        )
    )
    assert outcome == dict.fromkeys([*OFF_HOST_V4, *OFF_HOST_V6], "socket EPERM")


def test_dns_resolution_fails_for_every_name_that_is_not_in_etc_hosts(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                """
                import socket
                def resolve(name):
                    try:
                        return sorted({info[4][0] for info in socket.getaddrinfo(name, 443)})
                    except socket.gaierror as exc:
                        return exc.errno
                {name: resolve(name) for name in ("example.com", "metadata.google.internal", "host.docker.internal",
                                                  "localhost")}
                """
            )
        )
    )
    # EAI_AGAIN: the resolver found no way to its nameserver.
    failed = {name: code for name, code in outcome.items() if name != "localhost"}
    assert failed == dict.fromkeys(failed, socket.EAI_AGAIN), outcome
    assert set(outcome["localhost"]) <= {"127.0.0.1", "::1"}


def test_the_hosts_loopback_services_are_unreachable_from_the_sandbox(
    attack: Attack, settings: Settings, everything_http: str
):
    credentialed = int(everything_http.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", settings.port), timeout=5):
        pass  # the controller does listen on the host's loopback
    outcome = result(
        attack(
            textwrap.dedent(
                f"""
                import errno, socket
                def connect(family, address):
                    try:
                        probe = socket.socket(family, socket.SOCK_STREAM)
                    except OSError as exc:
                        return "socket " + errno.errorcode[exc.errno]
                    probe.settimeout(5)
                    try:
                        probe.connect(address)
                        return "connected"
                    except OSError as exc:
                        return errno.errorcode.get(exc.errno, str(exc.errno))
                    finally:
                        probe.close()
                [connect(socket.AF_INET, ("127.0.0.1", {settings.port})),
                 connect(socket.AF_INET, ("127.0.0.1", {credentialed})),
                 connect(socket.AF_INET6, ("::1", {settings.port}))]
                """
            )
        )
    )
    assert outcome == ["socket EPERM"] * 3


def test_no_sandbox_can_open_a_tcp_or_udp_listener_for_another_sandbox_or_the_host_to_reach(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                """
                import errno, socket
                def listen(family, kind, address):
                    try:
                        with socket.socket(family, kind) as listener:
                            listener.bind(address)
                            if kind == socket.SOCK_STREAM:
                                listener.listen()
                            return "listening"
                    except OSError as exc:
                        return errno.errorcode[exc.errno]
                [listen(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
                 listen(socket.AF_INET, socket.SOCK_DGRAM, ("0.0.0.0", 0)),
                 listen(socket.AF_INET6, socket.SOCK_STREAM, ("::", 0))]
                """
            )
        )
    )
    assert outcome == ["EPERM"] * 3


def test_an_abstract_unix_socket_is_invisible_to_other_sandboxes_and_the_host(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    name = f"\0mcpx-attack-{os.urandom(6).hex()}"
    owner = new_session(runtime=runtime)
    result(
        execute(
            api,
            owner,
            f"import socket\nabstract = socket.socket(socket.AF_UNIX)\nabstract.bind({name!r})\nabstract.listen()",
        )
    )
    connect = textwrap.dedent(
        f"""
        import errno, socket
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect({name!r})
            outcome = "connected"
        except OSError as exc:
            outcome = errno.errorcode[exc.errno]
        probe.close()
        outcome
        """
    )
    assert result(execute(api, owner, connect)) == "connected"
    assert result(execute(api, new_session(runtime=runtime), connect)) == "ECONNREFUSED"
    with socket.socket(socket.AF_UNIX) as host, pytest.raises(ConnectionRefusedError):
        host.connect(name)


def test_no_netlink_socket_can_be_opened_to_read_or_change_links_routes_and_addresses(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                """
                import errno, socket
                def opens(protocol):
                    try:
                        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol).close()
                        return "opened"
                    except OSError as exc:
                        return errno.errorcode[exc.errno]
                {"route": opens(socket.NETLINK_ROUTE), "audit": opens(9), "kobject_uevent": opens(15),
                 "sock_diag": opens(4), "generic": opens(16)}
                """
            )
        )
    )
    assert outcome == dict.fromkeys(["route", "audit", "kobject_uevent", "sock_diag", "generic"], "EPERM")


def test_raw_and_packet_sockets_cannot_be_opened(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                """
                import errno, socket
                def open_socket(*kind):
                    try:
                        socket.socket(*kind).close()
                        return "opened"
                    except OSError as exc:
                        return errno.errorcode[exc.errno]
                [open_socket(socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
                 open_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
                 open_socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)]
                """
            )
        )
    )
    assert outcome == ["EPERM"] * 3


def test_a_new_network_namespace_brings_no_way_out(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                """
                import ctypes, errno, json, os, socket
                CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
                read, write = os.pipe()
                child = os.fork()
                if child == 0:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
                        found = {"unshare": errno.errorcode[ctypes.get_errno()]}
                    else:
                        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        try:
                            probe.connect(("1.1.1.1", 53))
                            route = "routed"
                        except OSError as exc:
                            route = errno.errorcode[exc.errno]
                        found = {"unshare": "done", "links": [n for _, n in socket.if_nameindex()], "route": route}
                    os.write(write, json.dumps(found).encode())
                    os._exit(0)
                os.close(write)
                found = json.loads(os.read(read, 4096))
                os.waitpid(child, 0)
                found
                """
            )
        )
    )
    assert outcome == {"unshare": "EPERM"}  # the profile, under both runtimes
