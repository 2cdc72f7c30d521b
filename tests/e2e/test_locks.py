"""``drover lock`` and ``drover unlock`` against real processes on Redis: a locked service
holds releases back until it is unlocked, or until the lock's time is up; another's lock
is only let go by force, and every change is in the history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.cluster import Cluster, running_cluster
from tests.e2e.scenarios import drover

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster("redis", tmp_path_factory.mktemp("locks"), workers={"w": ("all",)}) as c:
        yield c


def submit(cluster: Cluster, folder: Path, service: str, version: str) -> str:
    path = folder / f"{service}-{version}.yaml"
    release = {"environment": "staging", "components": [{"service": service, "version": version}]}
    path.write_text(yaml.safe_dump(release))
    result = drover("release", "submit", str(path), "--json", env=cluster.env)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["id"])


def shown(cluster: Cluster, release_id: str) -> dict[str, Any]:
    return dict(json.loads(drover("release", "show", release_id, "--json", env=cluster.env).stdout))


def until(cluster: Cluster, release_id: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (view := shown(cluster, release_id))["state"] != state:
        assert time.monotonic() < deadline, f"{release_id} is {view['state']}, not {state}"
        time.sleep(0.2)
    return view


def test_a_locked_service_holds_releases_back_until_unlocked(
    cluster: Cluster, tmp_path: Path
) -> None:
    locked = drover(
        "lock", "staging/cache", "--reason", "db migration", "--actor", "alice", env=cluster.env
    )
    assert locked.returncode == 0, locked.stderr
    release_id = submit(cluster, tmp_path, "cache", "7.0.0")

    queued = until(cluster, release_id, "queued")
    assert queued["waiting_for"] == ["hold:staging/cache"]
    light = json.loads(drover("status", "--json", env=cluster.env).stdout)
    assert "locked" in {r["what"] for r in light["reasons"]}

    refused = drover("unlock", "staging/cache", "--actor", "bob", env=cluster.env)
    assert refused.returncode == 2 and "locked by alice" in refused.stderr
    assert drover("unlock", "staging/cache", "--actor", "alice", env=cluster.env).returncode == 0

    assert until(cluster, release_id, "succeeded")["state"] == "succeeded"


def test_a_lock_lets_go_when_its_time_is_up(cluster: Cluster, tmp_path: Path) -> None:
    taken = drover(
        "lock", "staging/jobs", "--reason", "quick check", "--for", "3s", env=cluster.env
    )
    assert taken.returncode == 0, taken.stderr
    release_id = submit(cluster, tmp_path, "jobs", "7.0.0")

    ended = until(cluster, release_id, "succeeded")

    # It waited behind the lock (the timeline says so), and started once the lock expired.
    queued = [e for e in ended["timeline"] if e["type"] == "ReleaseQueued"]
    assert queued and queued[0]["behind"] == ["hold:staging/jobs"]
    listed = json.loads(drover("locks", "--json", env=cluster.env).stdout)
    assert listed["locks"] == []
    (expired,) = [e for e in listed["history"] if e["action"] == "expired"]
    assert expired["lock"] == "staging/jobs"
    started = [e for e in ended["timeline"] if e["type"] == "StartRelease"]
    assert started[0]["at"] >= expired["at"]


def test_another_persons_lock_goes_only_by_force_and_that_is_recorded(cluster: Cluster) -> None:
    drover("lock", "staging/web", "--reason", "incident", "--actor", "carol", env=cluster.env)

    again = drover(
        "lock", "staging/web", "--reason", "mine now", "--actor", "dave", env=cluster.env
    )
    forced = drover("unlock", "staging/web", "--force", "--actor", "dave", env=cluster.env)

    assert again.returncode == 2 and "locked by carol" in again.stderr
    assert forced.returncode == 0, forced.stderr
    history = json.loads(drover("locks", "--json", env=cluster.env).stdout)["history"]
    assert history[0]["action"] == "unlocked by force"
    assert (history[0]["by"], history[0]["owner"]) == ("dave", "carol")


def test_a_bad_target_or_duration_is_refused_clearly(cluster: Cluster) -> None:
    bad_target = drover("lock", "staging", "--reason", "x", env=cluster.env)
    bad_duration = drover(
        "lock", "staging/web", "--reason", "x", "--for", "2 hours", env=cluster.env
    )

    assert bad_target.returncode == 2 and "ENVIRONMENT/SERVICE" in bad_target.stderr
    assert bad_duration.returncode == 2 and "e.g. 2h" in bad_duration.stderr
