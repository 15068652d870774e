"""Kernel software timestamps (SO_TIMESTAMPING) for the measuring clients and the echo servers.

A time read in Python before `send()` or after `recv()` includes the interpreter's own work on
both sides of the system call; on loopback that is most of what a round trip costs. The kernel can
stamp each datagram itself: the receive time arrives with the data as ancillary data of
`recvmsg`, the transmit time (taken as the packet reaches the device) comes back on the socket's
error queue (`MSG_ERRQUEUE`), named by SOF_TIMESTAMPING_OPT_ID: a counter of sends for a datagram
socket, the offset of the send's last byte for a TCP one (docs/architecture.md#timestamps-and-one-way-delay).

Software stamps are CLOCK_REALTIME: compare them with each other (or with `time.time_ns()`), never
with the monotonic clock the schedule keeps. The lab's client and server run on one host (loopback
or two namespaces of it), so both ends read the same clock.

`enable` returns why it could not (the socket type or the kernel refused): the caller falls back
to user-space times and the result says which were used.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Final

KERNEL: Final = "kernel"
USER: Final = "user"

SO_TIMESTAMPING: Final = getattr(socket, "SO_TIMESTAMPING", 37)  # asm-generic/socket.h (…_OLD)
SCM_TIMESTAMPING: Final = SO_TIMESTAMPING
# linux/net_tstamp.h
SOF_TIMESTAMPING_TX_SOFTWARE: Final = 1 << 1
SOF_TIMESTAMPING_RX_SOFTWARE: Final = 1 << 3
SOF_TIMESTAMPING_SOFTWARE: Final = 1 << 4
SOF_TIMESTAMPING_OPT_ID: Final = 1 << 7
SOF_TIMESTAMPING_OPT_TSONLY: Final = 1 << 11  # the error queue returns the stamp, not the packet
SOF_TIMESTAMPING_OPT_ID_TCP: Final = 1 << 16  # TCP keys count bytes written, not bytes acked
RECEIVE_FLAGS: Final = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE
TRANSMIT_FLAGS: Final = (SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_OPT_ID
                         | SOF_TIMESTAMPING_OPT_TSONLY)
# linux/errqueue.h: struct sock_extended_err, and where a timestamp's report comes from
SO_EE_ORIGIN_TIMESTAMPING: Final = 4
SCM_TSTAMP_SND: Final = 0
IP_RECVERR: Final = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR: Final = getattr(socket, "IPV6_RECVERR", 25)
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, origin, type, code, pad, ee_info, ee_data
_TIMESPEC64 = struct.Struct("=qq")  # the first of scm_timestamping's three: the software stamp
_TIMESPEC32 = struct.Struct("=ii")
# Room for SCM_TIMESTAMPING (3 timespecs) and a sock_extended_err with its address, generously.
ANCILLARY_BYTES: Final = socket.CMSG_SPACE(48) + socket.CMSG_SPACE(64)
TX_DRAIN_MAX = 256  # error-queue reads per call: a send burst is at most this long
# socket's MSG_* are enum flags: or-ing them on every call costs more than the system call's setup.
_ERRQUEUE_FLAGS: Final = int(socket.MSG_ERRQUEUE) | int(socket.MSG_DONTWAIT)
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
_RECVERR: Final = ((int(socket.IPPROTO_IP), IP_RECVERR), (int(socket.IPPROTO_IPV6), IPV6_RECVERR))


def enable(sock: socket.socket, *, transmit: bool = True) -> str | None:
    """Ask the kernel to stamp what `sock` receives (and, with `transmit`, sends). None if it
    will; otherwise why not (a sentence for the result's note). A TCP socket must be connected."""
    flags = RECEIVE_FLAGS
    if transmit:
        flags |= TRANSMIT_FLAGS
        if sock.type == socket.SOCK_STREAM:
            flags |= SOF_TIMESTAMPING_OPT_ID_TCP
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, flags)
    except OSError as exc:
        return f"the kernel refused SO_TIMESTAMPING on this socket ({exc.strerror or exc})"
    return None


def _timespec_ns(data: bytes) -> int | None:
    if len(data) >= 2 * _TIMESPEC64.size:  # 64-bit time_t: three 16-byte timespecs
        sec, nsec = _TIMESPEC64.unpack_from(data)
    elif len(data) >= _TIMESPEC32.size:
        sec, nsec = _TIMESPEC32.unpack_from(data)
    else:
        return None
    return sec * 1_000_000_000 + nsec if sec or nsec else None


def receive_stamp(ancillary: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time (CLOCK_REALTIME ns) in `recvmsg`'s ancillary data, None without one."""
    for level, kind, data in ancillary:
        if kind == SCM_TIMESTAMPING and level == _SOL_SOCKET:
            sec, nsec = _TIMESPEC64.unpack_from(data) if len(data) >= 32 else (0, 0)
            return sec * 1_000_000_000 + nsec if sec or nsec else _timespec_ns(data)
    return None


def transmit_stamps(sock: socket.socket, limit: int = TX_DRAIN_MAX) -> list[tuple[int, int]]:
    """(key, CLOCK_REALTIME ns) of each transmit stamp waiting on `sock`'s error queue: key is the
    send's number on a datagram socket (0, 1, ...), its last byte's offset on a TCP one. At most
    `limit` reads: a caller that knows how many stamps it awaits saves the read that finds none.
    `sock` must have no timeout (blocking or non-blocking): with one, Python polls before each read."""
    out: list[tuple[int, int]] = []
    for _ in range(limit):
        try:
            _, ancillary, _, _ = sock.recvmsg(0, ANCILLARY_BYTES, _ERRQUEUE_FLAGS)
        except (BlockingIOError, InterruptedError):
            return out
        except OSError:  # nothing readable there (or a stale error): the stamps stop here
            return out
        stamp = key = None
        for level, kind, data in ancillary:
            if kind == SCM_TIMESTAMPING and level == _SOL_SOCKET:
                stamp = _timespec_ns(data)
            elif (level, kind) in _RECVERR and len(data) >= _EXTENDED_ERR.size:
                _, origin, _, _, _, info, ee_data = _EXTENDED_ERR.unpack_from(data)
                if origin == SO_EE_ORIGIN_TIMESTAMPING and info == SCM_TSTAMP_SND:
                    key = ee_data
        if stamp is not None and key is not None:
            out.append((key, stamp))
    return out


class TransmitLog:
    """Which probe each transmit stamp of one socket belongs to.

    A probe is logged once sent with the key of its last byte: the socket's send count on a
    datagram socket (0, 1, ...), its last byte's offset in the byte stream on a TCP one. A stamp
    with key K belongs to every probe logged up to K not stamped yet: on TCP, one `send` of several
    queued probes is stamped once, at its last byte, so all of them left then (their last bytes
    did). Stamps come in key order, so the pending probes are a queue.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        from collections import deque

        self._pending: deque[tuple[int, int]] = deque()  # (last byte's key, seq)

    def __len__(self) -> int:
        """Probes logged whose stamp has not come yet."""
        return len(self._pending)

    def sent(self, seq: int, key: int) -> None:
        """Probe `seq` went out with its last byte at `key`."""
        self._pending.append((key, seq))

    def stamped(self, stamps: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, CLOCK_REALTIME ns) of the probes these (key, ns) stamps cover."""
        out = []
        pending = self._pending
        for key, stamp in stamps:
            while pending and pending[0][0] <= key:
                out.append((pending.popleft()[1], stamp))
        return out
