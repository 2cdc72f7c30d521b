"""``drover api``: Drover over HTTP, described by the OpenAPI document at ``/openapi.json``.

Everything the CLI offers on-call and pipelines: the light, queues, releases, the fleet;
submit, approve, reject, abort, pause, resume and retry. Every call carries a bearer token
(see ``tokens.py``) and is refused with 401 without a known one, 403 when the token may
not do that. The dashboard is ``/``; the chatops webhook joins in ``slack.py``.
"""

# No "from __future__ import annotations" here: FastAPI reads the annotations of the routes
# at run time, and those naming a local dependency (the guard) must be evaluated in place.
import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, status
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from orchestrator.api.slack import chatops_router
from orchestrator.api.tokens import Action, ApiTokens, Caller
from orchestrator.bus import BrokerUnavailable
from orchestrator.client import Client, fleet_versions, release_view, show
from orchestrator.contract import (
    AbortRelease,
    ApprovalRefused,
    ApproveRelease,
    Message,
    PauseRelease,
    RejectRelease,
    ResumeRelease,
    RetryRelease,
    SubmitRelease,
)
from orchestrator.manual_locks import LockHeld, NotLocked, NotYours, current, history, lock, unlock
from orchestrator.narration import describe
from orchestrator.plans import InvalidInput, plan_release
from orchestrator.queues import queue_depths
from orchestrator.runtime import Parts
from orchestrator.status import gather, judge
from orchestrator.store import StoreUnavailable

__all__ = ["create_app"]

_T = TypeVar("_T")
_bearer = HTTPBearer(auto_error=False, description="A token from the DROVER_API_TOKENS file.")


class Decision(BaseModel):
    """A person's (or a pipeline's) word on a release."""

    reason: str = Field(default="", max_length=500)
    component: str | None = Field(default=None, description="approve: only this component")


class Decided(BaseModel):
    release_id: str
    caused: list[str]  # what the coordinator did because of it, one line each


class Submitted(BaseModel):
    id: str
    created: bool  # false: the same Idempotency-Key was used before, nothing new started


def create_app(parts: Parts, tokens: ApiTokens) -> FastAPI:
    app = FastAPI(
        title="Drover",
        summary="Releases across many services and hosts, driven by a message bus.",
        version="1",
    )
    guard = _Guard(tokens)
    app.include_router(_reading(parts, guard))
    app.include_router(_acting(parts, guard))
    app.include_router(_locking(parts, guard))
    app.include_router(chatops_router(parts))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> str:
        page = resources.files("orchestrator.api") / "static" / "dashboard.html"
        return page.read_text(encoding="utf-8")

    return app


class _Guard:
    """Who is calling (401 if nobody known), and whether they may (403 if not)."""

    def __init__(self, tokens: ApiTokens):
        self._tokens = tokens

    def caller(
        self, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Caller:
        found = self._tokens.caller(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "a known bearer token is needed",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return found

    @staticmethod
    def allow(
        who: Caller, action: Action, environment: str = "", services: Sequence[str] = ()
    ) -> None:
        if not who.may(action, environment, services):
            where = f" in {environment}" if environment else ""
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"{who.name} may not {action}{where}")


def _reading(parts: Parts, guard: _Guard) -> APIRouter:
    def reader(who: Annotated[Caller, Depends(guard.caller)]) -> Caller:
        guard.allow(who, "read")
        return who

    router = APIRouter(prefix="/api", dependencies=[Depends(reader)])

    @router.get("/status", summary="The on-call light and its reasons")
    def get_status() -> dict[str, Any]:
        light, reasons = judge(gather(parts, datetime.now(UTC)))
        return {
            "light": light.name.lower(),
            "reasons": [
                {"light": r.light.name.lower(), "what": r.what, "detail": r.detail} for r in reasons
            ],
        }

    @router.get("/queues", summary="Every Drover queue: ready, in flight, consumers, age")
    def get_queues() -> list[dict[str, Any]]:
        return [dict(row) for row in _available(lambda: queue_depths(parts))]

    @router.get("/releases", summary="Recent releases, newest first")
    def get_releases(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict[str, Any]]:
        return [release_view(state) for state in parts.store.releases(limit)]

    @router.get("/releases/{release_id}", summary="One release with its timeline")
    def get_release(release_id: str) -> dict[str, Any]:
        view = show(parts.store, release_id)
        if view is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no release {release_id!r}")
        return view

    @router.get("/fleet", summary="The version each host runs")
    def get_fleet() -> dict[str, Any]:
        return fleet_versions(parts.fleet, parts.store)

    return router


def _acting(parts: Parts, guard: _Guard) -> APIRouter:
    router = APIRouter(prefix="/api")
    client = Client(parts.store, parts.bus)
    Who = Annotated[Caller, Depends(guard.caller)]

    @router.post(
        "/releases",
        status_code=status.HTTP_202_ACCEPTED,
        summary="Submit a release (it runs asynchronously; follow it by its id)",
    )
    def submit(
        request: SubmitRelease,
        who: Who,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Submitted:
        guard.allow(who, "deploy", request.environment, [c.service for c in request.components])
        try:
            plan_release(parts.fleet, request)
        except InvalidInput as invalid:
            detail = [{"path": p.path, "reason": p.reason} for p in invalid.problems]
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail) from invalid
        # A retried call with the same key must not start a second release: the key names
        # the release, and the store counts the calls that claimed it, atomically.
        release_id = _idempotent_id(who, idempotency_key)
        if release_id is not None and parts.store.count_attempt(f"api/{release_id}") > 1:
            return Submitted(id=release_id, created=False)
        submitted = _available(lambda: client.submit(request, who.actor, release_id))
        return Submitted(id=submitted, created=True)

    def decide(release_id: str, payload: Message, who: Caller, action: Action) -> Decided:
        stored = parts.store.load(release_id)
        if stored is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no release {release_id!r}")
        guard.allow(who, action, stored.state.environment)
        try:
            caused = _available(lambda: client.decide(release_id, payload, who.actor))
        except TimeoutError as error:
            raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, str(error)) from error
        for message in caused:
            if isinstance(message.payload, ApprovalRefused):
                raise HTTPException(status.HTTP_409_CONFLICT, message.payload.reason)
        return Decided(release_id=release_id, caused=[describe(m) for m in caused])

    @router.post("/releases/{release_id}/approve", summary="Let what waits for a person go on")
    def approve(release_id: str, body: Decision, who: Who) -> Decided:
        payload = ApproveRelease(component=body.component, comment=body.reason)
        return decide(release_id, payload, who, "approve")

    @router.post("/releases/{release_id}/reject", summary="Say no to what waits for approval")
    def reject(release_id: str, body: Decision, who: Who) -> Decided:
        return decide(release_id, RejectRelease(reason=body.reason), who, "approve")

    @router.post("/releases/{release_id}/abort", summary="Stop and roll back")
    def abort(release_id: str, body: Decision, who: Who) -> Decided:
        return decide(release_id, AbortRelease(reason=body.reason), who, "operate")

    @router.post("/releases/{release_id}/pause", summary="Start nothing new until resumed")
    def pause(release_id: str, body: Decision, who: Who) -> Decided:
        return decide(release_id, PauseRelease(reason=body.reason), who, "operate")

    @router.post("/releases/{release_id}/resume", summary="Carry on a paused release")
    def resume(release_id: str, who: Who) -> Decided:
        return decide(release_id, ResumeRelease(), who, "operate")

    @router.post("/releases/{release_id}/retry", summary="Run a failed release again")
    def retry(release_id: str, body: Decision, who: Who) -> Decided:
        return decide(release_id, RetryRelease(reason=body.reason), who, "operate")

    return router


class LockRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=500)
    for_s: float | None = Field(
        default=None, gt=0, le=30 * 86_400, description="None: until unlocked"
    )


def _locking(parts: Parts, guard: _Guard) -> APIRouter:
    router = APIRouter(prefix="/api/locks")
    Who = Annotated[Caller, Depends(guard.caller)]

    @router.get("", summary="Services held by people, and the history of locks")
    def get_locks(who: Who) -> dict[str, Any]:
        guard.allow(who, "read")
        held = [h.model_dump(mode="json") for h in current(parts.store)]
        return {"locks": held, "history": history(parts.store)}

    @router.put("/{environment}/{service}", summary="Hold a service: releases needing it wait")
    def put_lock(environment: str, service: str, body: LockRequest, who: Who) -> dict[str, Any]:
        guard.allow(who, "operate", environment)
        _known(parts, environment, service)
        try:
            taken = lock(
                parts.store,
                environment,
                service,
                owner=who.actor,
                reason=body.reason,
                for_s=body.for_s,
                now=datetime.now(UTC),
            )
        except LockHeld as held:
            raise HTTPException(status.HTTP_409_CONFLICT, str(held)) from held
        return taken.model_dump(mode="json")

    @router.delete("/{environment}/{service}", summary="Let a service go (force: another's)")
    def delete_lock(
        environment: str, service: str, who: Who, force: bool = False
    ) -> dict[str, Any]:
        guard.allow(who, "operate", environment)
        try:
            released = unlock(
                parts.store,
                environment,
                service,
                actor=who.actor,
                force=force,
                now=datetime.now(UTC),
            )
        except NotLocked as missing:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(missing)) from missing
        except NotYours as theirs:
            raise HTTPException(status.HTTP_409_CONFLICT, str(theirs)) from theirs
        return released.model_dump(mode="json")

    return router


def _known(parts: Parts, environment: str, service: str) -> None:
    known = parts.fleet.environments.get(environment)
    if known is None or service not in known.services:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no service {environment}/{service}")


def _idempotent_id(who: Caller, key: str | None) -> str | None:
    if key is None:
        return None
    digest = hashlib.sha256(f"{who.name}\n{key}".encode()).hexdigest()
    return f"R-{digest[:10]}"


def _available(call: Callable[[], _T]) -> _T:
    """The call's answer, or 503 when the broker or the store does not answer."""
    try:
        return call()
    except (BrokerUnavailable, StoreUnavailable) as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
