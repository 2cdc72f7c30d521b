"""A worker's leases, kept alive by its one keeper thread, on both stores.

A component's lease must outlive its time to live for as long as its worker holds it,
and a worker whose lease was taken over must find out before its next effect.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from orchestrator.store import Store, open_store
from workers.leases import Lease, LeaseKeeper, LeaseLost, claimed

_TTL_S = 0.9  # renewed every 0.3 s
_WAIT_S = 10.0


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.broker)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'drover.db'}", namespace="drover")
    else:
        namespace = request.getfixturevalue("namespace")
        opened = open_store(request.getfixturevalue("redis_url"), namespace=namespace)
    yield opened
    opened.close()


def _hold(keeper: LeaseKeeper, stack: ExitStack, component: str) -> Lease:
    held = stack.enter_context(
        claimed(
            keeper,
            f"r1/{component}/deploy/1",
            f"component/r1/{component}",
            journals=(),
            component=("r1", component),
            owner_prefix="worker-a",
            ttl_s=_TTL_S,
            waiting=lambda holder: None,
            waiting_every_s=1.0,
        )
    )
    assert isinstance(held, Lease)
    return held


def _keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "drover-lease-keeper"]


def test_leases_held_outlive_their_time_to_live_renewed_by_one_thread(store: Store) -> None:
    keeper, before = LeaseKeeper(store), set(_keeper_threads())
    with ExitStack() as stack:
        leases = [_hold(keeper, stack, f"svc-{n}") for n in range(5)]
        time.sleep(3 * _TTL_S)

        for lease in leases:
            lease.check()  # not lost
            other = store.claim_work(lease.work, lease.name, "worker-b/1", _TTL_S)
            assert (other.taken, other.holder) == (False, lease.owner)
        assert len(set(_keeper_threads()) - before) == 1

    for lease in leases:  # given up at the end of the block
        assert store.lease_holder(lease.name) is None


def test_a_lease_taken_over_is_found_lost_before_the_next_effect(store: Store) -> None:
    keeper = LeaseKeeper(store)
    with ExitStack() as stack:
        lease = _hold(keeper, stack, "web")
        # The lease lapses (a long pause of this worker) and another worker takes it.
        store.release_lease(lease.name, lease.owner)
        assert store.acquire_lease(lease.name, "worker-b/1", 60)

        deadline = time.monotonic() + _WAIT_S
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)

        with pytest.raises(LeaseLost):
            lease.check()
    assert store.lease_holder(lease.name) == "worker-b/1"  # left alone by the loser


def test_a_finished_lease_is_renewed_no_more(store: Store) -> None:
    keeper = LeaseKeeper(store)
    with ExitStack() as stack:
        lease = _hold(keeper, stack, "web")
    # Taken by another after this worker let it go: the keeper must not call it lost,
    # nor renew it from under the new holder.
    assert store.acquire_lease(lease.name, "worker-b/1", _TTL_S)
    time.sleep(2 * _TTL_S)

    assert not lease.lost
    assert store.lease_holder(lease.name) is None  # lapsed: nobody renewed it
