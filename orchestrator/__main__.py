"""``python -m orchestrator`` is the ``drover`` command."""

from orchestrator.cli import main

main()
