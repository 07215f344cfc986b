"""The test image server's own tricks, checked where they could silently stop working."""

from __future__ import annotations

import os
import socket

from harness.imageserver import peer_pid


def listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_peer_pid_finds_the_live_connection_not_a_closed_one_on_the_same_port() -> None:
    first, second = listening(), listening()
    # A connection from a fixed client port, closed by the client: its row stays in TIME_WAIT.
    old = socket.socket()
    old.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    old.bind(("127.0.0.1", 0))
    client_port = old.getsockname()[1]
    old.connect(second.getsockname())
    accepted_old, _ = second.accept()
    old.close()
    accepted_old.close()
    live = socket.socket()
    live.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    live.bind(("127.0.0.1", client_port))
    live.connect(first.getsockname())
    accepted, _ = first.accept()
    try:
        assert peer_pid(client_port, first.getsockname()[1]) == os.getpid()
        assert peer_pid(client_port, second.getsockname()[1]) is None
    finally:
        for s in (live, accepted, first, second):
            s.close()
