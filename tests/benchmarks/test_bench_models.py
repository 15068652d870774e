"""`DirectionModel.decide` per impairment: the Python cost every packet pays once an impairment is set.

Group "models-decide": one timed call decides BATCH packets with an injected clock (10 000 packets/s),
so `1 / (median / BATCH)` is the packets/s the model alone could sustain on one core. Pure: no network.
"""

from __future__ import annotations

import pytest

from lab.link.models import DirectionModel, LinkConfig

BATCH = 1000
TICK = 1e-4  # seconds between packets (10 000 packets/s)
PACKET = bytes([0x45]) + bytes(63)  # a 64-byte IPv4 packet (IHL 5)

CASES = {
    "null": {},
    "loss": {"loss": "1%"},
    "gemodel": {"loss": "gemodel 1% 30%"},
    "delay": {"delay": "10ms"},
    "jitter-normal": {"delay": "10ms", "jitter": "2ms", "distribution": "normal"},
    "reorder": {"delay": "10ms", "reorder": "10%"},
    "duplicate": {"duplicate": "1%"},
    "corrupt": {"corrupt": "1%"},
    "rate": {"rate": "100mbit", "limit": "1000"},
    "everything": {"loss": "1%", "delay": "10ms", "jitter": "2ms", "reorder": "5%", "duplicate": "1%",
                   "corrupt": "1%", "rate": "100mbit"},
}


@pytest.mark.benchmark(group="models-decide")
@pytest.mark.parametrize("case", list(CASES))
def test_decide(benchmark, case: str) -> None:
    """BATCH decisions of one direction's model with `case` set."""
    model = DirectionModel(LinkConfig.from_options(CASES[case]).forward, 1)
    clock = [0.0]

    def decide_batch() -> None:
        now = clock[0]
        decide = model.decide
        for _ in range(BATCH):
            now += TICK
            decide(PACKET, now)
        clock[0] = now

    benchmark.pedantic(decide_batch, rounds=50, iterations=1, warmup_rounds=2)
    c = model.counters
    assert c["packets_in"] >= BATCH
    assert c["forwarded"] + c["dropped_loss"] + c["dropped_queue"] - c["duplicated"] == c["packets_in"]
    if benchmark.stats is not None:  # None when benchmarks are disabled (xdist)
        benchmark.extra_info["packets_per_s"] = round(BATCH / benchmark.stats.stats.median)
