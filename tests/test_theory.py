"""lab.theory against answers worked out by hand."""

from __future__ import annotations

import math

import pytest

from lab import theory


def test_mathis_by_hand() -> None:
    # 1448-byte MSS, 10 ms RTT, 1 % loss: 1448*8/0.010 = 1 158 400 bit/s; x 1.2247/0.1 = 14.19 Mbit/s
    assert theory.mathis(1448, 0.010, 0.01) == pytest.approx(14_187_000, rel=1e-3)
    # delayed ACKs: C = sqrt(3/4)
    assert theory.mathis(1448, 0.010, 0.01, c=math.sqrt(0.75)) == pytest.approx(10_032_000, rel=1e-3)
    # four times the loss: half the rate
    assert theory.mathis(1000, 0.1, 0.04) == pytest.approx(theory.mathis(1000, 0.1, 0.01) / 2)
    assert theory.mathis(1448, 0.01, 0.0) == math.inf


@pytest.mark.parametrize("args", [(0, 0.01, 0.01), (1448, 0, 0.01), (1448, 0.01, 1.5), (1448, 0.01, -0.1)])
def test_mathis_refuses_nonsense(args: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        theory.mathis(*args)


def test_arq_utilisation_by_hand() -> None:
    # 1000-byte frames at 1 Mbit/s: 8 ms each; RTT 16 ms: a = 8 ms / 8 ms = 1, so 1 + 2a = 3
    a = theory.propagation_ratio(1000, 1e6, 0.016)
    assert a == pytest.approx(1.0)
    assert theory.arq_utilisation("sw", 8, a) == pytest.approx(1 / 3)  # the window is 1 whatever it says
    assert theory.arq_utilisation("gbn", 2, a) == pytest.approx(2 / 3)
    assert theory.arq_utilisation("sr", 3, a) == pytest.approx(1.0)
    assert theory.arq_utilisation("sr", 8, a) == pytest.approx(1.0)  # min(1, ...)
    assert theory.arq_utilisation("gbn", 8, a, p=0.1) == pytest.approx(0.9)
    assert theory.arq_utilisation("sw", 1, a, p=0.5) == pytest.approx(1 / 6)
    with pytest.raises(ValueError):
        theory.arq_utilisation("xyz", 1, a)


def test_jain_index_by_hand() -> None:
    assert theory.jain_index([5, 5, 5, 5]) == pytest.approx(1.0)
    assert theory.jain_index([10, 0, 0, 0]) == pytest.approx(0.25)
    # (1+2+3+4)^2 / (4 x 30) = 100/120
    assert theory.jain_index([1, 2, 3, 4]) == pytest.approx(100 / 120)
    for bad in ([], [0, 0], [1, -1]):
        with pytest.raises(ValueError):
            theory.jain_index(bad)


def test_rpm_by_hand() -> None:
    assert theory.rpm([0.1]) == pytest.approx(600.0)
    # twenty samples: the slowest (1 s) is the top 5 %, trimmed; the other 19 (0.05 s) give 1200 RPM
    assert theory.rpm([0.05] * 19 + [1.0]) == pytest.approx(1200.0)
    # ten samples: 5 % of ten rounds to nothing trimmed (nearest rank keeps ceil(9.5) = 10)
    assert theory.rpm([0.05] * 9 + [0.15]) == pytest.approx(60 / 0.06)
    # forty samples: keep 38 of them
    samples = [0.01 * (i + 1) for i in range(40)]
    assert theory.trimmed_mean(samples) == pytest.approx(sum(samples[:38]) / 38)
    with pytest.raises(ValueError):
        theory.rpm([])
