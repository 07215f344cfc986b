"""`python -m harness.netdelay QUEUE DELAY_MS`: hold every packet that iptables sends to
NFQUEUE number QUEUE for DELAY_MS, then let it go, in order. A link's delay where the kernel
has no `sch_netem` (this machine's and CI's kernels lack it); run inside the namespace whose
rules queue the packets (`harness.netns.Topology.shape`). Prints READY once bound.

It speaks nfnetlink_queue itself over a netlink socket (no library: libnetfilter_queue's
Python bindings need a compiler). The packets stay in the kernel; only their ids come up."""

from __future__ import annotations

import errno
import heapq
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
# Packets held at once. Past it the kernel lets packets through undelayed (fail open) rather
# than drop them: the delay then understates, never adds loss of its own.
QUEUE_LENGTH = 65_536
RECEIVE_BUFFER = 8 << 20


def attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def message(kind: int, queue: int, attributes: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    # nfgenmsg: family AF_UNSPEC, version 0, the queue number (big-endian)
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attributes
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0)
    return header + body


def config(queue: int) -> list[bytes]:
    bind = attribute(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0))
    copy_meta = attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    length = attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_LENGTH))
    flags = attribute(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
    mask = attribute(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
    acked = NLM_F_REQUEST | NLM_F_ACK
    return [
        message(NFQNL_MSG_CONFIG, queue, bind, acked),
        message(NFQNL_MSG_CONFIG, queue, copy_meta + length + flags + mask, acked),
    ]


def verdict(queue: int, packet_id: int) -> bytes:
    header = attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
    return message(NFQNL_MSG_VERDICT, queue, header)


def packet_ids(data: bytes) -> Iterator[int]:
    """The ids of the queued packets in one read from the socket (it may hold several)."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        if kind == NLMSG_ERROR:
            code = struct.unpack_from("=i", data, offset + 16)[0]
            if code != 0:
                raise OSError(-code, f"nfnetlink_queue refused: {errno.errorcode.get(-code)}")
        elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            at = offset + 20  # past nlmsghdr and nfgenmsg
            while at + 4 <= offset + length:
                size, attr = struct.unpack_from("=HH", data, at)
                if size < 4:
                    break
                if attr & 0x7FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, at + 4)[0]
                at += (size + 3) & ~3
        offset += (length + 3) & ~3


def run(queue: int, delay: float) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    sock.bind((0, 0))
    for request in config(queue):
        sock.send(request)
        list(packet_ids(sock.recv(65_536)))  # the acknowledgement, or OSError
    print("READY", flush=True)
    held: list[tuple[float, int]] = []  # (release time, packet id), a heap
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([sock], [], [], wait)
        if readable:
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # a burst overflowed the buffer: TCP resends
                    raise
                continue
            release = time.monotonic() + delay
            for packet_id in packet_ids(data):
                heapq.heappush(held, (release, packet_id))
        now = time.monotonic()
        while held and held[0][0] <= now:
            sock.send(verdict(queue, heapq.heappop(held)[1]))


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(int(sys.argv[1]), float(sys.argv[2]) / 1000)


if __name__ == "__main__":
    main()
