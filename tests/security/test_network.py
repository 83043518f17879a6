"""Attacks on network isolation from inside the sandbox, under both runtimes.

Nothing here sends a packet off this host even if isolation were broken: off-host targets are probed with UDP
connect() (a routing-table lookup that sends nothing) and by reading the kernel's own tables; TCP goes only to
loopback, which inside the sandbox is the sandbox's own.
"""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from typing import Any

import httpx
import pytest

from controller.config import Settings
from tests.conftest import SessionFactory, execute
from tests.security.conftest import Attack

NO_ROUTE = {"ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL", "EINVAL"}
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
                import os, socket
                lines = lambda path: [line for line in open(path).read().splitlines() if line.strip()]
                {
                    "if_nameindex": sorted(name for _, name in socket.if_nameindex()),
                    "sys": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
                    "dev": sorted(line.split(":")[0].strip() for line in lines("/proc/net/dev")[2:]),
                    "if_inet6": sorted({line.split()[5] for line in lines("/proc/net/if_inet6")}),
                    "arp": lines("/proc/net/arp")[1:],
                }
                """
            )
        )
    )
    assert views["if_nameindex"] == views["dev"] == ["lo"]
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


def test_udp_connect_finds_no_route_to_any_off_host_address(attack: Attack):
    outcome = result(
        attack(
            textwrap.dedent(
                f"""
                import errno, socket
                def route(family, address):
                    probe = socket.socket(family, socket.SOCK_DGRAM)
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
    assert set(outcome) == {*OFF_HOST_V4, *OFF_HOST_V6}
    assert set(outcome.values()) <= NO_ROUTE, outcome


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
                    probe = socket.socket(family, socket.SOCK_STREAM)
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
    controller, everything, ipv6 = outcome
    assert controller == everything == "ECONNREFUSED"
    assert ipv6 in ("ECONNREFUSED", "EADDRNOTAVAIL", "ENETUNREACH")  # runc gives its lo no IPv6 address


def test_a_listener_in_one_sandbox_is_reachable_from_neither_another_sandbox_nor_the_host(
    api: httpx.Client, new_session: SessionFactory, runtime: str
):
    listening = new_session(runtime=runtime)
    port = result(
        execute(
            api,
            listening,
            "import socket\nlistener = socket.socket()\nlistener.bind(('127.0.0.1', 0))\nlistener.listen()\n"
            "listener.getsockname()[1]",
        )
    )
    connect = textwrap.dedent(
        f"""
        import errno, socket
        probe = socket.socket()
        probe.settimeout(5)
        try:
            probe.connect(("127.0.0.1", {port}))
            outcome = "connected"
        except OSError as exc:
            outcome = errno.errorcode[exc.errno]
        probe.close()
        outcome
        """
    )
    assert result(execute(api, listening, connect)) == "connected"  # the listener is live
    assert result(execute(api, new_session(runtime=runtime), connect)) == "ECONNREFUSED"
    # The host can take the same port: the sandbox's listener is not on the host's loopback.
    with socket.socket() as host:
        host.bind(("127.0.0.1", port))


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


NETLINK_DUMP = textwrap.dedent(
    """
    import socket, struct

    def dump(kind, header):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as link:
            link.settimeout(5)
            link.send(struct.pack("=IHHII", 16 + len(header), kind, 0x301, 1, 0) + header)  # NLM_F_REQUEST|DUMP
            messages = []
            while True:
                data, offset = link.recv(1 << 16), 0
                while offset < len(data):
                    length, message_type = struct.unpack_from("=IH", data, offset)
                    if message_type in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                        return messages
                    messages.append(data[offset + 16 : offset + length])
                    offset += (length + 3) & ~3

    def attributes(body):
        found, offset = {}, 0
        while offset + 4 <= len(body):
            length, kind = struct.unpack_from("=HH", body, offset)
            if length < 4:
                break
            found[kind] = body[offset + 4 : offset + length]
            offset += (length + 3) & ~3
        return found

    links = {}
    for body in dump(18, bytes(16)):  # RTM_GETLINK
        links[struct.unpack_from("=i", body, 4)[0]] = attributes(body[16:]).get(3, b"").rstrip(b"\\0").decode()
    routes = []
    for body in dump(26, bytes(12)):  # RTM_GETROUTE, every family and table
        family, prefix = struct.unpack_from("=BB", body)
        found = attributes(body[12:])
        device = links.get(struct.unpack("=i", found[4])[0]) if 4 in found else None
        routes.append([family, found.get(1, b"").hex(), prefix, 5 in found, device])  # RTA_DST, RTA_GATEWAY
    addresses = []
    for body in dump(22, bytes(8)):  # RTM_GETADDR
        family, _, _, _, index = struct.unpack_from("=BBBBi", body)
        addresses.append([family, attributes(body[8:]).get(1, b"").hex(), links.get(index)])
    {"links": sorted(links.values()), "routes": routes, "addresses": addresses}
    """
)


def test_a_netlink_dump_shows_only_loopback_links_routes_and_addresses(attack: Attack):
    tables = result(attack(NETLINK_DUMP))
    assert tables["links"] == ["lo"]
    assert tables["routes"], "the dump returned no routes at all: the parser is broken"
    for family, destination, _prefix, gateway, device in tables["routes"]:
        assert gateway is False
        assert device == "lo"
        if family == socket.AF_INET:
            assert destination.startswith("7f"), destination
        else:
            assert destination in ("", "00000000000000000000000000000001"), destination
    assert sorted(address for _, address, _ in tables["addresses"]) in (
        ["7f000001"],
        ["00000000000000000000000000000001", "7f000001"],
    )
    assert {device for *_, device in tables["addresses"]} == {"lo"}


def test_adding_a_route_over_netlink_is_refused(attack: Attack):
    answer = result(
        attack(
            textwrap.dedent(
                """
                import socket, struct
                with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as link:
                    link.settimeout(5)
                    # RTM_NEWROUTE: a default IPv4 route via 127.0.0.1 out of lo, main table.
                    route = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0)
                    route += struct.pack("=HH4s", 8, 5, socket.inet_aton("127.0.0.1")) + struct.pack("=HHi", 8, 4, 1)
                    link.send(struct.pack("=IHHII", 16 + len(route), 24, 0x405, 1, 0) + route)
                    reply = link.recv(1 << 16)
                struct.unpack_from("=H", reply, 4)[0], -struct.unpack_from("=i", reply, 16)[0]
                """
            )
        )
    )
    message_type, error = answer
    assert message_type == 2  # NLMSG_ERROR
    assert errno.errorcode[error] in ("EPERM", "EACCES")


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


def test_a_new_network_namespace_brings_no_way_out(attack: Attack, runtime: str):
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
    if runtime == "runc":
        assert outcome == {"unshare": "EPERM"}  # seccomp and the missing CAP_SYS_ADMIN
    else:
        # gVisor grants a user namespace; the network namespace inside it is as empty as the sandbox's.
        assert outcome["unshare"] == "done"
        assert set(outcome["links"]) <= {"lo"}
        assert outcome["route"] in NO_ROUTE
