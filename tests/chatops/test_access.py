"""Who may deploy, approve and operate by chat: the fleet file's rules, as a matrix."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from orchestrator.chatops.access import Action, Verdict, allowed, required_action
from orchestrator.chatops.grammar import parse
from orchestrator.fleet.access import AccessGroups, EnvironmentAccess, access_problem

GROUPS = AccessGroups.model_validate(
    yaml.safe_load(
        """
        groups:
          release-managers: [U2CERLKJA, roadrunner]
          payments-team: [wile, U0PAYMENTS]
          empty: []
        """
    )
)
PROD = EnvironmentAccess.model_validate(
    yaml.safe_load(
        """
        deploy:
          "*": [release-managers]
          payments: [payments-team, alice]
          ledger: []
        approve: [release-managers, bob]
        operate: [release-managers, payments-team]
        """
    )
)
ANYONE_DEPLOYS_NOTHING_ELSE = EnvironmentAccess(deploy={"search": ("carol",)})

ROADRUNNER = ("U2CERLKJA", "roadrunner")  # a release manager, by id and by name

MATRIX: list[
    tuple[str, EnvironmentAccess | None, tuple[str, ...], Action, tuple[str, ...], bool]
] = [
    # (case, environment, actor names, action, services, allowed?)
    ("group member by id", PROD, ("U2CERLKJA", "someone"), "deploy", ("checkout",), True),
    ("group member by name", PROD, ("UNKNOWN1", "roadrunner"), "deploy", ("checkout",), True),
    ("group member, both names", PROD, ROADRUNNER, "approve", (), True),
    ("'*' covers a service without an entry", PROD, ROADRUNNER, "deploy", ("search", "api"), True),
    ("a service entry replaces '*'", PROD, ROADRUNNER, "deploy", ("payments",), False),
    ("a service entry names a group", PROD, ("wile",), "deploy", ("payments",), True),
    ("a service entry names a person", PROD, ("alice",), "deploy", ("payments",), True),
    ("a service's team only deploys it", PROD, ("wile",), "deploy", ("checkout",), False),
    ("an empty entry lets nobody", PROD, ROADRUNNER, "deploy", ("ledger",), False),
    ("mixed: one service refused", PROD, ("alice",), "deploy", ("payments", "checkout"), False),
    ("mixed: all allowed", PROD, ("alice", "roadrunner"), "deploy", ("payments", "checkout"), True),
    ("a deploy of no services", PROD, ROADRUNNER, "deploy", (), False),
    ("approve: a person listed", PROD, ("bob",), "approve", (), True),
    ("approve: deployers may not", PROD, ("alice",), "approve", (), False),
    ("operate: a group listed", PROD, ("U0PAYMENTS",), "operate", (), True),
    ("operate: a person not listed", PROD, ("bob",), "operate", (), False),
    ("unknown actor", PROD, ("U999", "mallory"), "deploy", ("checkout",), False),
    ("unknown actor approves", PROD, ("mallory",), "approve", (), False),
    ("no actor names at all", PROD, (), "operate", (), False),
    ("names are matched exactly", PROD, ("RoadRunner", "u2cerlkja"), "approve", (), False),
    ("a group's name is not a member", PROD, ("release-managers",), "approve", (), False),
    ("services ignored for approve", PROD, ("bob",), "approve", ("ledger",), True),
    (
        "no '*': unlisted service refused",
        ANYONE_DEPLOYS_NOTHING_ELSE,
        ("carol",),
        "deploy",
        ("api",),
        False,
    ),
    (
        "no '*': listed service allowed",
        ANYONE_DEPLOYS_NOTHING_ELSE,
        ("carol",),
        "deploy",
        ("search",),
        True,
    ),
    (
        "no approve list: nobody approves",
        ANYONE_DEPLOYS_NOTHING_ELSE,
        ("carol",),
        "approve",
        (),
        False,
    ),
    ("no access section: deploy", None, ROADRUNNER, "deploy", ("checkout",), False),
    ("no access section: approve", None, ROADRUNNER, "approve", (), False),
    ("no access section: operate", None, ROADRUNNER, "operate", (), False),
]


@pytest.mark.parametrize(
    ("environment", "actor", "action", "services", "expected"),
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_authorization_matrix(
    environment: EnvironmentAccess | None,
    actor: tuple[str, ...],
    action: Action,
    services: tuple[str, ...],
    expected: bool,
) -> None:
    verdict = allowed(GROUPS, environment, actor_names=actor, action=action, services=services)
    assert verdict.allowed is expected
    assert bool(verdict) is expected
    assert (verdict.reason == "") is expected  # a refusal always says why


def test_without_access_the_reason_says_the_environment_has_none() -> None:
    verdict = allowed(GROUPS, None, actor_names=ROADRUNNER, action="operate")
    assert verdict.reason == (
        "this environment has no `access` in the fleet file, so nobody may operate here by chat"
    )


def test_a_refused_deploy_names_each_refused_service_and_who_may() -> None:
    verdict = allowed(
        GROUPS,
        PROD,
        actor_names=("alice",),
        action="deploy",
        services=("payments", "checkout", "ledger"),
    )
    assert verdict == Verdict(
        allowed=False,
        reason=(
            "you may not deploy checkout, ledger here"
            " (checkout: only release-managers may; ledger: nobody may)"
        ),
        action="deploy",
        services=("checkout", "ledger"),
    )


def test_one_refused_service_carries_who_may() -> None:
    verdict = allowed(GROUPS, PROD, actor_names=ROADRUNNER, action="deploy", services=("payments",))
    assert verdict.services == ("payments",)
    assert verdict.who_may == ("payments-team", "alice")
    assert "only payments-team, alice may" in verdict.reason


def test_a_refused_approval_says_who_may() -> None:
    verdict = allowed(GROUPS, PROD, actor_names=("mallory",), action="approve")
    assert verdict.reason == "you may not approve here; only release-managers, bob may"
    assert verdict.who_may == ("release-managers", "bob")


def test_a_service_deployed_twice_is_named_once() -> None:
    verdict = allowed(GROUPS, PROD, actor_names=("wile",), action="deploy", services=("api", "api"))
    assert verdict.services == ("api",)


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("deploy payments@1.0 to prod", "deploy"),
        ("deploy flag checkout.one-click on to prod", "deploy"),
        ("plan payments@1.0 to prod", None),
        ("approve R-1", "approve"),
        ("reject R-1", "approve"),
        ("abort R-1", "operate"),
        ("pause R-1", "operate"),
        ("resume R-1", "operate"),
        ("retry R-1", "operate"),
        ("lock prod/payments db", "operate"),
        ("unlock prod/payments", "operate"),
        ("status", None),
        ("queues", None),
        ("where payments", None),
        ("help", None),
    ],
)
def test_each_command_needs_its_action(text: str, action: Action | None) -> None:
    assert required_action(parse(text)) == action


# The fleet file's shapes.


def test_access_may_be_left_empty() -> None:
    assert AccessGroups().groups == {}
    assert EnvironmentAccess() == EnvironmentAccess(deploy={}, approve=(), operate=())


@pytest.mark.parametrize(
    ("model", "data", "words"),
    [
        (AccessGroups, {"groups": {"ops": ["alice"], "all": ["ops", "bob"]}}, "groups do not nest"),
        (AccessGroups, {"groups": {"ops": ["al ice"]}}, "pattern"),
        (AccessGroups, {"groups": {"-ops": ["alice"]}}, "pattern"),
        (AccessGroups, {"groups": {"ops": ["a" * 81]}}, "pattern"),
        (AccessGroups, {"members": {}}, "Extra inputs"),
        (EnvironmentAccess, {"deploy": {"Payments": ["alice"]}}, "pattern"),
        (EnvironmentAccess, {"deploy": {"**": ["alice"]}}, "pattern"),
        (EnvironmentAccess, {"approve": ["<!channel>"]}, "pattern"),
        (EnvironmentAccess, {"approve": "alice"}, "tuple"),
        (EnvironmentAccess, {"read": ["alice"]}, "Extra inputs"),
    ],
)
def test_bad_access_is_refused(
    model: type[AccessGroups | EnvironmentAccess], data: object, words: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(data)
    assert words in str(refused.value)


def test_access_is_frozen() -> None:
    with pytest.raises(ValidationError):
        PROD.approve = ("mallory",)  # type: ignore[misc]


def test_a_deploy_entry_must_name_a_service_of_the_environment() -> None:
    assert access_problem(PROD, ["payments", "ledger", "checkout"]) == ""
    assert access_problem(PROD, ["checkout"]) == (
        "access.deploy names unknown service(s): ledger, payments"
    )
