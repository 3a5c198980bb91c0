"""free_port draws ports below the kernel's ephemeral range (no outgoing connection can take
one between the choice and the bind), bindable, and never one already promised."""

from __future__ import annotations

import socket

from system.transport.redis_server import PORTS_FROM, _ephemeral_low, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_can_be_bound():
    low = _ephemeral_low()
    taken: set[int] = set()
    for _ in range(20):
        port = free_port(taken=taken)
        assert PORTS_FROM <= port < low and port not in taken
        taken.add(port)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free indeed


def test_a_port_in_use_is_not_returned(monkeypatch):
    from system.transport import redis_server

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        used = busy.getsockname()[1]
        # Only two candidates: the busy port and the next one.
        monkeypatch.setattr(redis_server, "PORTS_FROM", used)
        monkeypatch.setattr(redis_server, "_ephemeral_low", lambda: used + 2)
        assert {free_port() for _ in range(20)} <= {used + 1} | _kernel_range()
        assert free_port(taken={used + 1}) != used  # nothing left: the kernel picks


def _kernel_range() -> set[int]:
    low = _ephemeral_low()
    return set(range(low, 65536))
