"""The ARQ protocols through the real impaired link (privileged): every probe delivered byte-exact
at 20 % loss each way. Textbook ARQ recovers only by timeouts (RTO at least 200 ms), so the
counts are small; the open-loop go-back-N case is ping-pong here because under 20 % loss each way
its RTO backs off for seconds (Karn's rule leaves no clean sample when every segment in flight is
sent again): that is measured by the scenarios, not asserted here."""

from __future__ import annotations

from typing import Any

import pytest

from lab.records import TrafficPlan

PLANS = {
    "arq-sw": TrafficPlan(count=6, timeout=10.0),
    "arq-gbn": TrafficPlan(count=10, timeout=10.0, window=4),
    "arq-sr": TrafficPlan(count=40, rate=100, timeout=10.0, window=16),
}


@pytest.mark.privileged
@pytest.mark.parametrize("name", list(PLANS))
def test_every_probe_is_delivered_byte_exact_at_20_percent_loss_each_way(impaired_link: Any,
                                                                        name: str) -> None:
    link = impaired_link(loss="20%")
    result = link.run(name, PLANS[name])
    assert (result.sent, result.received, result.corrupted, result.late) == (PLANS[name].count,) * 2 + (0, 0)
    sender = result.observations["arq"]["sender"]
    assert sender["sent"] == PLANS[name].count and sender["retransmitted"] > 0  # the loss was repaired
    dropped = result.link["forward"].get("dropped_loss", 0) + result.link["reverse"].get("dropped_loss", 0)
    assert dropped > 0
