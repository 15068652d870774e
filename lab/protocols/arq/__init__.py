"""Reliability built on UDP: three ARQ (automatic repeat request) schemes, readable as a lesson.

Read in this order:

- `segment.py`: the header every datagram carries (DATA or ACK, numbers, SACK bitmap, CRC);
- `timer.py`: when to send again — RFC 6298's retransmission timer and Karn's rule;
- `base.py`: what the machines share (counters, the window, the in-order receiver);
- `stop_and_wait.py`, `go_back_n.py`, `selective_repeat.py`: the three machines, each a sender
  and a receiver;
- `simulation.py`: a lossy channel in-process, to watch them work (`python -m lab.protocols.arq`);
- `endpoint.py`, `protocol.py`, `server.py`: the same machines on real UDP sockets, as the lab's
  protocols `arq-sw`, `arq-gbn` and `arq-sr`.

The machines are sans-IO: no sockets, no clock; time and datagrams are handed in
(docs/architecture.md#protocols).
"""
