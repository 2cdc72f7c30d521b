"""The driver a service's fleet file asks for."""

from __future__ import annotations

from orchestrator.fleet.drivers import (
    DriverConfig,
    HttpDriverConfig,
    ShellDriverConfig,
    SimulatedDriverConfig,
)
from orchestrator.store import Held, Store
from workers.drivers import Driver
from workers.drivers.http import HttpDriver
from workers.drivers.shell import ShellDriver
from workers.drivers.simulated import SimulatedDriver

__all__ = ["driver_for", "writes_effects_to_store"]


def driver_for(
    config: DriverConfig,
    store: Store,
    *,
    environment: str,
    service: str,
    release_id: str,
    rollback: bool,
    under: Held | None = None,
) -> Driver:
    """A driver for one service; ``rollback`` marks the simulator's effects as undoing,
    and ``under`` is the lease its changes are made under (see ``Effect``)."""
    match config:
        case SimulatedDriverConfig():
            return SimulatedDriver(
                config,
                store,
                environment=environment,
                service=service,
                release_id=release_id,
                rollback=rollback,
                under=under,
            )
        case ShellDriverConfig():
            return ShellDriver(config, environment=environment, service=service)
        case HttpDriverConfig():
            return HttpDriver(config, environment=environment, service=service)
    raise TypeError(f"no driver for {config!r}")


def writes_effects_to_store(config: DriverConfig) -> bool:
    """Whether the driver's effects are writes to the store (the simulator's), which
    orders them with the worker's own writes."""
    return isinstance(config, SimulatedDriverConfig)
