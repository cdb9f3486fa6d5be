"""A private "host" for a process: a Linux network namespace on a veth link, which can be
cut (a network partition) and slowed (`tc netem`), with only loopback-range addresses.

The database servers listen on 127.0.0.1 of this machine. A process in the namespace
reaches them through a TCP relay in the root namespace, listening on the link's host
end (`127.<a>.<b>.1`); the namespace's end is `127.<a>.<b>.2`. Loopback-range addresses
on a veth need `route_localnet`, set on the two interfaces only. Everything is made by
`Namespace.create()` and removed by `close()`; it needs root (`ip`, `tc`).

Cutting the link (`cut()`, both ends down) carries no packet either way, as a partition
does: no RST, no FIN, the process and the server each see a peer that went silent.
A delay on the link needs the kernel's `netem` qdisc, which not every kernel has. The relay keeps
its own connection to the server open, so the server sees an idle client: what ends a
session then is the server's idle-in-transaction timeout (and, on a direct link, the
TCP keepalives); `docs/architecture.md` says which bound applies where.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    return None


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


def _sysctl(name: str, value: str, netns: str | None = None) -> None:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    _run(*prefix, "sysctl", "-qw", f"{name}={value}")


@dataclass
class Namespace:
    """One namespace with a veth link to the root namespace."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    relays: list[Relay] = field(default_factory=list)
    _made: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, index: int = 0, delay_ms: float = 0.0) -> Namespace:
        """Namespace number `index` (addresses 127.77.<index>.1/.2), with `delay_ms`
        added each way on the link (netem)."""
        tag = uuid.uuid4().hex[:6]
        ns = cls(
            name=f"fs-{tag}",
            host_if=f"fsh{tag}",
            ns_if=f"fsn{tag}",
            host_ip=f"127.77.{index}.1",
            ns_ip=f"127.77.{index}.2",
        )
        try:
            ns._build(delay_ms)
        except BaseException:
            ns.close()
            raise
        return ns

    def _build(self, delay_ms: float) -> None:
        _run("ip", "netns", "add", self.name)
        self._made.append("netns")
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._made.append("link")
        _run("ip", "link", "set", self.ns_if, "netns", self.name)
        _sysctl(f"net.ipv4.conf.{self.host_if}.route_localnet", "1")
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.name)
        _sysctl("net.ipv4.conf.all.route_localnet", "1", self.name)
        _sysctl(f"net.ipv4.conf.{self.ns_if}.route_localnet", "1", self.name)
        _run(*inside, "ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _run(*inside, "ip", "link", "set", self.ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if delay_ms:
            self._netem(f"delay {delay_ms}ms")

    def _netem(self, spec: str) -> None:
        for device, netns in ((self.host_if, None), (self.ns_if, self.name)):
            prefix = ("ip", "netns", "exec", netns) if netns else ()
            _run(*prefix, "tc", "qdisc", "replace", "dev", device, "root", "netem", *spec.split())

    def _link(self, state: str) -> None:
        _run("ip", "link", "set", self.host_if, state)
        _run("ip", "netns", "exec", self.name, "ip", "link", "set", self.ns_if, state)

    def cut(self) -> None:
        """Carry no packet either way (a partition): both ends of the link go down. TCP
        sees no RST and no FIN; its segments are retried into the void."""
        self._link("down")

    def restore(self) -> None:
        """The link carries packets again (the addresses' routes come back with it)."""
        self._link("up")

    def command(self, args: Sequence[str]) -> list[str]:
        """`args` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def relay(self, target_port: int, target_host: str = "127.0.0.1") -> Relay:
        """A TCP relay from this namespace's link to a server of this machine."""
        relay = Relay(self.host_ip, (target_host, target_port))
        relay.start()
        self.relays.append(relay)
        return relay

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        if "link" in self._made:
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        if "netns" in self._made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self._made.clear()


class Relay:
    """Copies bytes between clients on `listen_host` and one upstream server."""

    def __init__(self, listen_host: str, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((listen_host, 0))
        self.address = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)

    @property
    def port(self) -> int:
        return int(self.address[1])

    def upstream_ports(self) -> set[int]:
        """Local ports of the relay's connections to the server (one per client)."""
        ports = set()
        for sock in list(self._peers):
            try:
                if sock.getpeername()[:2] == self.upstream:
                    ports.add(int(sock.getsockname()[1]))
            except OSError:
                continue
        return ports

    def start(self) -> None:
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in [self._listener, *self._peers]:
            sock.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        server = socket.create_connection(self.upstream, timeout=5)
        for sock in (client, server):
            sock.setblocking(True)
            sock.settimeout(None)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[server] = server, client

    def _pump(self, sock: socket.socket) -> None:
        other = self._peers.get(sock)
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if data and other is not None:
            try:
                other.sendall(data)
                return
            except OSError:
                pass
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            s.close()
