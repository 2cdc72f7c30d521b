"""What a command carried out to its end leaves on record for whoever looks later.

A worker records its last reports and journal entry with the outcome, in one store call:
the end of the command must hold every step's start and end and every host's journal,
the last step's included, as it would had they been recorded on their own.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.contract import ComponentDeployed, StepStarted
from orchestrator.vocabulary import Step
from tests.support.runner import web_deploy
from workers.tasks import work_key

HOSTS = ["web-1", "web-2", "web-3"]  # the fleet's web: rolling, one host a batch
STEPS = ["drain", "deploy", "verify", "undrain"]


def test_a_finished_command_has_every_step_and_host_on_record(tmp_path: Path) -> None:
    with web_deploy(tmp_path) as (parts, runner, command):
        runner.deploy(command.to_wire())

        timeline = parts.store.timeline("r1")
        journal = parts.store.progress(work_key(command))
        outcome = parts.store.outcome(work_key(command))

    started = [m.payload for m in timeline if isinstance(m.payload, StepStarted)]
    ended = [m for m in timeline if m.type == "StepSucceeded"]
    assert [(s.batch, s.step) for s in started] == [
        (batch, Step(step)) for batch in (1, 2, 3) for step in STEPS
    ]
    assert len(ended) == len(started)  # the last step's end included
    assert journal == dict.fromkeys(HOSTS, STEPS)
    assert outcome is not None and isinstance(outcome.payload, ComponentDeployed)
