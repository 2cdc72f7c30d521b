"""The slash command's grammar: what each text parses to, and the reply when it does not."""

from __future__ import annotations

import pytest

from orchestrator.chatops.grammar import (
    HELP,
    MAX_TEXT,
    ChatError,
    Command,
    Component,
    Decide,
    Deploy,
    Help,
    Lock,
    Queues,
    Status,
    Unlock,
    Where,
    parse,
)
from orchestrator.contract.commands import (
    AbortRelease,
    ApproveRelease,
    ComponentRequest,
    PauseRelease,
    RejectRelease,
    ResumeRelease,
    RetryRelease,
)


def deploy(*components: Component, to: str = "prod", reason: str = "") -> Deploy:
    return Deploy(to, components, reason)


FULLWIDTH_DEPLOY = "".join(chr(ord(c) - ord("a") + 0xFF41) for c in "deploy")
PAYMENTS = Component("payments", "2.4.0")
CHECKOUT = Component("checkout", "1.9.0")
ONE_CLICK_ON = Component("checkout", flag="one-click", enabled=True)

PARSES: list[tuple[str, Command]] = [
    # deploy: components in the order given, an optional reason taken verbatim
    (
        "deploy payments@2.4.0 checkout@1.9.0 to prod because new fee model",
        deploy(PAYMENTS, CHECKOUT, reason="new fee model"),
    ),
    ("deploy checkout@1.9.0 payments@2.4.0 to prod", deploy(CHECKOUT, PAYMENTS)),
    ("  DEPLOY   payments@2.4.0\t TO  prod   ", deploy(PAYMENTS)),
    ("Deploy payments@2.4.0 to prod BECAUSE  two  spaces ", deploy(PAYMENTS, reason="two  spaces")),
    ("deploy payments@2.4.0, checkout@1.9.0 to prod", deploy(PAYMENTS, CHECKOUT)),
    ("deploy payments@2.4.0 , checkout@1.9.0 to prod", deploy(PAYMENTS, CHECKOUT)),
    ("deploy payments@2.4.0\u00a0to\u00a0prod", deploy(PAYMENTS)),  # no-break spaces
    (
        "deploy payments@2.4.0+build.7 to staging",
        deploy(Component("payments", "2.4.0+build.7"), to="staging"),
    ),
    (
        "deploy payments@2.4.0 to prod because fix <!channel> & `rm`",
        deploy(PAYMENTS, reason="fix <!channel> & `rm`"),
    ),
    (
        "deploy payments@2.4.0 to prod because line one\nline two",
        deploy(PAYMENTS, reason="line one\nline two"),
    ),
    ("deploy payments@2.4.0 to prod because " + "r" * 500, deploy(PAYMENTS, reason="r" * 500)),
    (
        "deploy payments@2.4.0 to prod because to prod because",
        deploy(PAYMENTS, reason="to prod because"),
    ),
    # flag flips, alone or after a deploy
    ("deploy flag checkout.one-click on to prod", deploy(ONE_CLICK_ON)),
    (
        "deploy FLAG checkout.one-click OFF to prod",
        deploy(Component("checkout", flag="one-click", enabled=False)),
    ),
    ("deploy checkout@1.9.0 flag checkout.one-click on to prod", deploy(CHECKOUT, ONE_CLICK_ON)),
    ("deploy flag checkout.one-click on, payments@2.4.0 to prod", deploy(ONE_CLICK_ON, PAYMENTS)),
    # plan: a deploy that only looks
    ("plan payments@2.4.0 to prod", Deploy("prod", (PAYMENTS,), "", dry_run=True)),
    ("PLAN payments@2.4.0 to prod because why not", Deploy("prod", (PAYMENTS,), "why not", True)),
    # decisions on a release
    ("approve R-42", Decide("approve", "R-42")),
    ("approve r.42_x-1 component api", Decide("approve", "r.42_x-1", component="api")),
    (
        "approve R-42 COMPONENT checkout.one-click",
        Decide("approve", "R-42", component="checkout.one-click"),
    ),
    (
        "approve R-42 component api because looks fine",
        Decide("approve", "R-42", "looks fine", "api"),
    ),
    ("approve R-42 because looks fine", Decide("approve", "R-42", "looks fine")),
    ("reject R-42", Decide("reject", "R-42")),
    ("reject R-42 because not during the sale", Decide("reject", "R-42", "not during the sale")),
    ("abort R-42 because errors are up", Decide("abort", "R-42", "errors are up")),
    ("ABORT R-42", Decide("abort", "R-42")),
    ("pause R-42 because watching", Decide("pause", "R-42", "watching")),
    ("resume R-42", Decide("resume", "R-42")),
    ("retry R-42", Decide("retry", "R-42")),
    ("retry R-42 because the flake is fixed", Decide("retry", "R-42", "the flake is fixed")),
    ("abort " + "R" * 100, Decide("abort", "R" * 100)),
    # reading
    ("status", Status()),
    ("Status R-42", Status("R-42")),
    ("queues", Queues()),
    ("QUEUES  ", Queues()),
    ("where payments", Where("payments")),
    ("help", Help()),
    ("help deploy", Help()),
    ("", Help()),
    ("   \n\t ", Help()),
    # locks
    ("lock prod/payments database migration", Lock("prod", "payments", "database migration")),
    (
        "lock prod/payments database migration for 2h",
        Lock("prod", "payments", "database migration", 7200),
    ),
    ("lock prod/payments db FOR 30M", Lock("prod", "payments", "db", 1800)),
    ("lock prod/payments db for 90s", Lock("prod", "payments", "db", 90)),
    ("lock prod/payments db for 1d", Lock("prod", "payments", "db", 86_400)),
    ("lock prod/payments db for 30d", Lock("prod", "payments", "db", 30 * 86_400)),
    ("lock prod/payments because waiting for QA", Lock("prod", "payments", "waiting for QA")),
    ("lock prod/payments waiting for 2 people", Lock("prod", "payments", "waiting for 2 people")),
    (
        "lock prod/payments for the freeze for 1d",
        Lock("prod", "payments", "for the freeze", 86_400),
    ),
    ("unlock prod/payments", Unlock("prod", "payments")),
    ("unlock prod/payments FORCE", Unlock("prod", "payments", force=True)),
]


@pytest.mark.parametrize(("text", "command"), PARSES, ids=[t[:50] for t, _ in PARSES])
def test_parses(text: str, command: Command) -> None:
    assert parse(text) == command


# Each refusal: words the reply must hold (the problem, and where useful the right form).
REFUSALS: list[tuple[str, tuple[str, ...]]] = [
    # unknown commands, with the nearest known word
    (
        "deplyo payments@2.4.0 to prod",
        ("don't know the command `deplyo`", "Did you mean `deploy`?", "`help`"),
    ),
    ("stauts", ("`stauts`", "Did you mean `status`?")),
    ("aprove R-42", ("Did you mean `approve`?",)),
    ("unlcok prod/payments", ("Did you mean `unlock`?",)),
    ("rollback R-42", ("don't know the command `rollback`", "`help`")),
    ("xyzzy", ("don't know the command `xyzzy`", "`help` lists every command")),
    (FULLWIDTH_DEPLOY + " payments@2.4.0 to prod", ("don't know the command",)),
    ("🚀 payments@2.4.0 to prod", ("don't know the command `🚀`",)),
    ("$(rm -rf /)", ("don't know the command `$(rm`",)),
    ("<!channel> deploy", ("`&lt;!channel&gt;`",)),
    ("<https://evil.example|click>", ("&lt;https://evil.example|click&gt;",)),
    # deploy, malformed
    ("deploy", ("needs at least one `SERVICE@VERSION`", "The form is `deploy")),
    ("deploy to prod", ("needs at least one",)),
    ("deploy payments@2.4.0", ("needs `to ENVIRONMENT`", "e.g. `deploy payments@2.4.0")),
    ("deploy payments@2.4.0 to", ("`to` needs an environment",)),
    ("deploy payments@2.4.0 prod", ("`prod` needs a version", "write `to prod`")),
    ("deploy payments@2.4.0 $(rm)", ("`$(rm)` is not `SERVICE@VERSION`",)),
    ("deploy payments to prod", ("`payments` needs a version", "`payments@2.4.0`")),
    ("deploy payments@ to prod", ("empty version",)),
    ("deploy @2.4.0 to prod", ("`` is not a service name",)),
    ("deploy Payments@2.4.0 to prod", ("`Payments` is not a service name", "lowercase")),
    ("deploy paymënts@2.4.0 to prod", ("`paymënts` is not a service name",)),
    ("deploy $(rm)@1 to prod", ("`$(rm)` is not a service name",)),
    ("deploy payments@$(rm) to prod", ("`$(rm)` is not a version",)),
    ("deploy payments@2.4.0;rm to prod", ("`2.4.0;rm` is not a version",)),
    ("deploy payments@a@b to prod", ("`a@b` is not a version",)),
    ("deploy payments@2.4.0 to $(rm)", ("`$(rm)` is not an environment name",)),
    ("deploy payments@2.4.0 to Prod", ("`Prod` is not an environment name",)),
    (
        "deploy payments@2.4.0 to prod staging",
        ("expected `because REASON` or nothing, not `staging`",),
    ),
    ("deploy payments@2.4.0 to prod because", ("`because` needs a reason",)),
    ("deploy payments@2.4.0 because fees to prod", ("`to ENVIRONMENT` comes before `because`",)),
    ("deploy payments@2.4.0 after ledger@1.0 to prod", ("`after` is not supported",)),
    ("deploy payments@2.4.0 payments@2.5.0 to prod", ("`payments` is listed more than once",)),
    ("deploy payments@2.4.0 to prod because " + "r" * 501, ("501 characters", "at most 500")),
    ("plan payments@2.4.0", ("`plan` needs `to ENVIRONMENT`", "The form is `plan")),
    # flags, malformed
    ("deploy flag to prod", ("`flag` needs a `SERVICE.FLAG`",)),
    ("deploy flag checkout to prod", ("`checkout` is not `SERVICE.FLAG`",)),
    ("deploy flag checkout.one-click to prod", ("`on` or `off`",)),
    ("deploy flag checkout.one-click maybe to prod", ("`on` or `off`",)),
    ("deploy flag checkout.One_Click on to prod", ("`One_Click` is not a flag name",)),
    (
        "deploy flag checkout.one-click on flag checkout.one-click off to prod",
        ("`checkout.one-click` is listed more than once",),
    ),
    # decisions, malformed
    ("approve", ("`approve` needs a release id", "`approve R-42 component api`")),
    ("abort", ("`abort` needs a release id",)),
    ("approve R/42", ("`R/42` is not a release id",)),
    ("abort -R42", ("`-R42` is not a release id",)),
    ("abort " + "R" * 101, ("is not a release id",)),
    ("approve R-42 component", ("`component` needs a name",)),
    ("approve R-42 component Api", ("`Api` is not a component",)),
    ("approve R-42 api", ("not `api`",)),
    ("reject R-42 component api", ("not `component`",)),
    (
        "abort R-42 errors are up",
        ("expected `because REASON`", "`abort R-42 because errors are up`"),
    ),
    ("abort R-42 because", ("`because` needs a reason",)),
    ("resume R-42 because ready", ("did not expect `because`", "`resume RELEASE`")),
    ("retry R-42 R-43", ("not `R-43`",)),
    # reading, malformed
    ("status R-42 now", ("did not expect `now`",)),
    ("status R/42", ("is not a release id",)),
    ("queues prod", ("did not expect `prod`", "The form is `queues`")),
    ("where", ("`where` needs a service",)),
    ("where payments prod", ("did not expect `prod`",)),
    ("where Payments", ("is not a service name",)),
    # locks, malformed
    ("lock", ("`lock` needs `ENVIRONMENT/SERVICE`",)),
    ("lock payments db", ("as `ENVIRONMENT/SERVICE`, not `payments`",)),
    ("lock prod/", ("`` is not a service name",)),
    ("lock /payments db", ("`` is not an environment name",)),
    ("lock prod/payments", ("`lock` needs a reason",)),
    ("lock prod/payments for 2h", ("`lock` needs a reason",)),
    ("lock prod/payments because", ("`lock` needs a reason",)),
    ("lock prod/payments db for 2 hours", ("one word: `for 2h`",)),
    ("lock prod/payments db for 2x", ("`2x` is not a duration", "90s, 30m, 2h or 1d")),
    ("lock prod/payments db for 2.5h", ("`2.5h` is not a duration",)),
    ("lock prod/payments db for 0m", ("from 1s to 30d",)),
    ("lock prod/payments db for 31d", ("from 1s to 30d",)),
    ("lock prod/payments db for 99999999999999999999h", ("not a duration",)),
    ("lock prod/payments " + "r" * 501, ("at most 500",)),
    ("unlock prod/payments now", ("did not expect `now`",)),
    ("unlock prod/payments force now", ("did not expect `now`",)),
]


@pytest.mark.parametrize(("text", "words"), REFUSALS, ids=[t[:50] for t, _ in REFUSALS])
def test_refuses_with_a_reply_that_helps(text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(ChatError) as refused:
        parse(text)
    for word in words:
        assert word in refused.value.reply
    # Slack reads "<...>" as a mention or a link, wherever it stands in a reply.
    assert "<" not in refused.value.reply
    assert ">" not in refused.value.reply


@pytest.mark.parametrize(
    "text",
    [
        "x" * (MAX_TEXT + 1),
        "deploy " + "payments@2.4.0 " * 200 + "to prod",
        "deploy " + "a" * 5000 + "@1 to prod",
    ],
)
def test_very_long_text_is_refused_by_its_length(text: str) -> None:
    with pytest.raises(ChatError) as refused:
        parse(text)
    assert f"at most {MAX_TEXT}" in refused.value.reply


def test_text_at_the_limit_is_read() -> None:
    text = "deploy payments@2.4.0 to prod because "
    text += "r" * (MAX_TEXT - len(text))
    with pytest.raises(ChatError) as refused:
        parse(text)
    assert "reason" in refused.value.reply  # read, and refused for its long reason


def test_a_long_word_is_shortened_in_the_reply() -> None:
    with pytest.raises(ChatError) as refused:
        parse("x" * 1000)
    assert len(refused.value.reply) < 200


@pytest.mark.parametrize("text", ["\x00\x1b[31m", "deploy \x00@1 to prod", "where \u202epayments"])
def test_control_characters_are_not_echoed(text: str) -> None:
    with pytest.raises(ChatError) as refused:
        parse(text)
    assert all(ch.isprintable() or ch == "\n" for ch in refused.value.reply)


def test_help_shows_every_command_with_an_example() -> None:
    for verb in (
        "deploy", "plan", "approve", "reject", "abort", "pause", "resume", "retry",
        "status", "queues", "where", "lock", "unlock", "help",
    ):  # fmt: skip
        assert f"`{verb}" in HELP


def test_help_has_nothing_slack_would_read_as_a_mention_or_link() -> None:
    assert "<" not in HELP
    assert ">" not in HELP


def test_every_example_in_help_parses() -> None:
    examples = [line.split("E.g. `")[1].rstrip("`") for line in HELP.splitlines()[1:]]
    assert len(examples) == 14
    for example in examples:
        parse(example)


def test_a_deploy_becomes_a_release_whose_flag_flip_waits_for_its_deploy() -> None:
    command = parse(
        "deploy checkout@1.9.0 flag checkout.one-click on payments@2.4.0 to prod because x"
    )
    assert isinstance(command, Deploy)
    release = command.release()
    assert release.environment == "prod"
    assert release.reason == "x"
    assert release.components == (
        ComponentRequest(service="checkout", version="1.9.0"),
        ComponentRequest(service="checkout", flag="one-click", depends_on=("checkout",)),
        ComponentRequest(service="payments", version="2.4.0"),
    )
    assert command.services == ("checkout", "payments")


def test_a_flag_flip_alone_waits_for_nothing() -> None:
    command = parse("deploy flag checkout.one-click off to prod")
    assert isinstance(command, Deploy)
    (flip,) = command.release().components
    assert flip == ComponentRequest(service="checkout", flag="one-click", enabled=False)


@pytest.mark.parametrize(
    ("text", "payload"),
    [
        ("approve R-1 component api because ok", ApproveRelease(component="api", comment="ok")),
        ("reject R-1 because no", RejectRelease(reason="no")),
        ("abort R-1 because errors", AbortRelease(reason="errors")),
        ("pause R-1", PauseRelease()),
        ("resume R-1", ResumeRelease()),
        ("retry R-1 because fixed", RetryRelease(reason="fixed")),
    ],
)
def test_a_decision_becomes_its_contract_command(text: str, payload: object) -> None:
    command = parse(text)
    assert isinstance(command, Decide)
    assert command.command() == payload
