"""The simulated fleet as another process sees it, through a store of its own on the same
SQLite file: a fleet whose steps take time shows each change as soon as it is made."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

from orchestrator.fleet.drivers import SimulatedDriverConfig
from orchestrator.store.sqlite import SqliteStore
from workers.drivers.simulated import SimulatedDriver


def test_a_fleet_whose_steps_take_time_shows_each_change_as_it_is_made(tmp_path: Path) -> None:
    path = str(tmp_path / "drover.db")
    config = SimulatedDriverConfig(kind="simulated", initial_version="1.0.0", latency_ms=1)
    with closing(SqliteStore(path)) as store, closing(SqliteStore(path)) as elsewhere:
        driver = SimulatedDriver(
            config, store, environment="prod", service="web", release_id="r1", rollback=False
        )

        driver.drain("web-1")
        assert elsewhere.drained_hosts("prod", "web") == {"web-1"}
        driver.deploy("web-1", "2.0.0")
        assert elsewhere.host_versions("prod", "web") == {"web-1": "2.0.0"}
        driver.undrain("web-1")
        assert elsewhere.drained_hosts("prod", "web") == set()
        driver.switch("blue")
        assert elsewhere.service_state("prod", "web")["live_colour"] == "blue"
        driver.set_flag("new-checkout", True)
        assert elsewhere.service_state("prod", "web")["flag:new-checkout"] == "on"


def test_the_versions_of_several_hosts_are_what_each_runs(tmp_path: Path) -> None:
    config = SimulatedDriverConfig(kind="simulated", initial_version="1.0.0")
    with closing(SqliteStore(str(tmp_path / "drover.db"))) as store:
        driver = SimulatedDriver(
            config, store, environment="prod", service="web", release_id="r1", rollback=False
        )
        driver.deploy("web-2", "2.0.0")

        hosts = ["web-1", "web-2", "web-3"]
        assert driver.current_versions(hosts) == {
            "web-1": "1.0.0",  # never deployed: the fleet's initial version
            "web-2": "2.0.0",
            "web-3": "1.0.0",
        }
        assert driver.current_versions(hosts) == {h: driver.current_version(h) for h in hosts}
        assert driver.current_versions([]) == {}
