"""Bulk traffic: a flow that sends as fast as its protocol allows (or at a set rate) to a sink.

The other half of "TCP vs UDP" (docs/architecture.md#bulk-traffic): probes measure delay and loss
of small messages; a bulk flow measures what a protocol does when it wants all the bandwidth.

- `BulkPlan`: what one flow sends (for how long / how many bytes, at what rate, when it starts).
- `BulkResult`: what it achieved, as the sink counted it (bytes delivered in order and intact,
  per interval), plus the sender's view (retransmissions; TCP: a cwnd/srtt trace from TCP_INFO;
  rate-driven datagrams: receive-side loss, jitter and reordering from sequence numbers).
- `Protocol.run_bulk(address, plan)` (lab.protocols) runs one flow against the protocol's sink
  (`Protocol.sinking(place)` starts one; `run_bulk_loopback` does both on loopback;
  `lab.link.session.Link.bulk`/`start_bulk` run flows through the impaired link).
- `BulkInterrupted`: a flow stopped by Ctrl-C/SIGTERM where the caller must stop too (`Link.bulk`),
  carrying what was measured.

Both are plain data with `to_dict`/`from_dict`: they cross process boundaries (a flow run inside
the link's client namespace) and land in `result.json` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lab.bulk.plan import (
    DEFAULT_INTERVAL_S,
    MAX_BULK_BYTES,
    MAX_BULK_RATE_BPS,
    MAX_BULK_SECONDS,
    MIN_INTERVAL_S,
    BulkInterrupted,
    BulkPlan,
    BulkResult,
)

if TYPE_CHECKING:
    from lab.protocols import Protocol

__all__ = ["DEFAULT_INTERVAL_S", "MAX_BULK_BYTES", "MAX_BULK_RATE_BPS", "MAX_BULK_SECONDS", "MIN_INTERVAL_S",
           "BulkInterrupted", "BulkPlan", "BulkResult", "run_bulk_loopback"]


def run_bulk_loopback(protocol: str | Protocol, plan: BulkPlan, *,
                      progress: Callable[..., None] | None = None) -> BulkResult:
    """One flow of `protocol` to its sink on loopback (started for it, stopped after)."""
    from lab.protocols import get_protocol

    chosen = get_protocol(protocol) if isinstance(protocol, str) else protocol
    chosen.require_available()
    with chosen.sinking() as address:
        return chosen.run_bulk(address, plan, progress=progress)

