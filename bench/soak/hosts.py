"""Simulated hosts: one network namespace per hub host, joined to the root namespace by a veth link.

Layout of a run with namespaces (``ip netns``, needs root):

- hub host ``a`` and ``b``: namespace ``hsoak<pid>-a`` / ``-b``; the link's root end is
  ``10.(200+n).<k>.1/24``, the namespace end ``10.(200+n).<k>.2/24`` plus :data:`ADDRESSES` more
  addresses, each reached from the root namespace from its own source address (a ``/32`` route with
  ``src``), so clients arrive from many source addresses without binding anything themselves;
- Redis (the Sentinel group) and PostgreSQL stay in the root namespace on loopback: each hub host
  reaches them only through listening sockets that the soak opens *inside* that host's namespace
  on the same ``127.0.0.1`` ports (:func:`listen_in`), served by a :class:`~bench.soak.proxy.LinkProxy`
  per host. That proxy is the host's link to its Redis and database: the partition, the latency and
  the database outage act there, on one host or on all.

Names carry the soak's PID, every namespace and link is deleted in ``finally``, and leftovers of a
run whose PID is gone are deleted at the start (:func:`delete_leftovers`). Without root or
``ip netns``, :func:`namespaces_permitted` says why and the soak runs everything on loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field

PREFIX = "hsoak"
ADDRESSES = 16
CLONE_NEWNET = 0x40000000
_LIBC = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def namespaces_permitted() -> tuple[bool, str]:
    """Whether this process may create namespaces, and if not, why (one line)."""
    if os.geteuid() != 0:
        return False, "not root: ip netns needs CAP_SYS_ADMIN"
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        made = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"ip netns is not usable: {exc}"
    if made.returncode != 0:
        return False, f"ip netns add failed: {made.stderr.strip()}"
    _ip("netns", "delete", name, check=False)
    return True, ""


def delete_leftovers() -> list[str]:
    """Delete namespaces and links of earlier soaks whose process is gone; returns their names."""
    gone: list[str] = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if match and not _alive(int(match.group(1))):
            _ip("netns", "delete", name, check=False)
            gone.append(name)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        match = re.match(r"\d+: (hs(\d+)[ab])[@:]", line)
        if match and not _alive(int(match.group(2))):
            _ip("link", "delete", match.group(1), check=False)
            gone.append(match.group(1))
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    """One simulated hub host: its namespace (``None`` on loopback) and the addresses to reach it."""

    name: str
    netns: str | None
    hub_addresses: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    listen_host: str = "127.0.0.1"

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv


def create_host(letter: str, index: int) -> Host:
    """Create namespace and veth link for hub host ``letter`` (``a``, ``b``) of this soak."""
    pid = os.getpid()
    netns = f"{PREFIX}{pid}-{letter}"
    outer, inner = f"hs{pid}{letter}", f"hs{pid}{letter}i"
    net = f"10.{200 + index}.{pid % 250}"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", netns)
        _ip("addr", "add", f"{net}.1/24", "dev", outer)
        _ip("link", "set", outer, "up")
        inside = ["ip", "netns", "exec", netns, "ip"]
        subprocess.run([*inside, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run([*inside, "addr", "add", f"{net}.2/24", "dev", inner], check=True, timeout=10)
        addresses = []
        for n in range(ADDRESSES):
            hub_ip, client_ip = f"{net}.{100 + n}", f"{net}.{10 + n}"
            subprocess.run([*inside, "addr", "add", f"{hub_ip}/32", "dev", inner], check=True, timeout=10)
            _ip("addr", "add", f"{client_ip}/32", "dev", outer)
            _ip("route", "add", f"{hub_ip}/32", "dev", outer, "src", client_ip)
            addresses.append(hub_ip)
        subprocess.run([*inside, "link", "set", inner, "up"], check=True, timeout=10)
        subprocess.run([*inside, "route", "add", "default", "via", f"{net}.1"], check=True, timeout=10)
    except BaseException:
        delete_host(Host(letter, netns))
        raise
    return Host(letter, netns, hub_addresses=addresses, listen_host="0.0.0.0")


def delete_host(host: Host) -> None:
    """Delete the host's namespace (its end of the link goes with it, and so the root end)."""
    if host.netns:
        _ip("netns", "delete", host.netns, check=False)
        pid = host.netns[len(PREFIX):].split("-")[0]
        _ip("link", "delete", f"hs{pid}{host.name}", check=False)


def listen_in(netns: str | None, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket listening on ``host:port`` inside ``netns`` (the root namespace for ``None``).

    The socket belongs to the namespace it was created in, whatever thread later accepts on it;
    this thread returns to its own namespace before returning."""
    if netns is None:
        return _listening(host, port)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
        try:
            return _listening(host, port)
        finally:
            if _LIBC.setns(own, CLONE_NEWNET) != 0:
                # Carrying on in the wrong namespace would send the rest of the soak elsewhere.
                raise SystemExit("could not return to the root network namespace")
    finally:
        os.close(target)
        os.close(own)


def _listening(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    return sock
