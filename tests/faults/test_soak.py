"""A small soak in every CI run; long ones are run by hand (docs/reliability.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.soak import soak

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_small_soak_keeps_every_invariant(broker: str, tmp_path: Path) -> None:
    tally = soak(releases=4, seed=20261126, broker=broker, logs=tmp_path)
    assert tally.releases == 4
    assert tally.kills > 0  # the seed is chosen so that something is killed
    assert tally.failures == []
