"""The Celery application: JSON only, late acks, one message at a time per slot.

There is no module-level app: each process builds its own in its composition root
(:mod:`orchestrator.runtime`), so nothing is configured at import time.
"""

from __future__ import annotations

from celery import Celery

from orchestrator.bus import transport_for, transport_options

__all__ = ["create_celery"]


def create_celery(broker_url: str, namespace: str, visibility_timeout_s: float) -> Celery:
    app = Celery(f"{namespace}-workers", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # outcomes travel as events, not as Celery results
        # A component's message is acknowledged only when the component is finished, so
        # a worker that dies mid-component leaves it to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_create_missing_queues=True,
        task_default_queue=f"{namespace}.default",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    app.conf.broker_transport = transport_for(broker_url)
    app.conf.broker_transport_options = transport_options(broker_url, visibility_timeout_s)
    return app
