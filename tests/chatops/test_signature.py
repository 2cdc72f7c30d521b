"""Slack request signatures: Slack's own worked example, and each way a request is refused."""

from __future__ import annotations

import pytest

from orchestrator.chatops.signature import SignatureRefused, sign, verify

# The worked example of api.slack.com/authentication/verifying-requests-from-slack.
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TIMESTAMP = "1531420618"
BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow"
    b"&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner"
    b"&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands"
    b"%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
NOW = float(TIMESTAMP)
# Digits that int() reads, but that are not the ASCII the signed string is made of.
FULLWIDTH_TIMESTAMP = "".join(chr(0xFF10 + int(d)) for d in TIMESTAMP)


def headers(timestamp: str = TIMESTAMP, signature: str = SIGNATURE) -> dict[str, str]:
    return {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}


def refusal(
    headers: dict[str, str], *, body: bytes = BODY, now: float = NOW, secret: str = SECRET
) -> str:
    with pytest.raises(SignatureRefused) as refused:
        verify(secret, headers, body, now)
    assert SECRET not in str(refused.value)
    return refused.value.reason


def test_slacks_example_is_signed_as_slack_says() -> None:
    assert sign(SECRET, TIMESTAMP, BODY) == SIGNATURE


def test_slacks_example_verifies() -> None:
    verify(SECRET, headers(), BODY, NOW)


def test_header_names_are_read_in_any_case() -> None:
    lower = {"x-slack-request-timestamp": TIMESTAMP, "X-SLACK-SIGNATURE": SIGNATURE}
    verify(SECRET, lower, BODY, NOW)


def test_a_signature_in_uppercase_hex_verifies() -> None:
    verify(SECRET, headers(signature="v0=" + SIGNATURE[3:].upper()), BODY, NOW)


@pytest.mark.parametrize("skew", [-300, -299.5, 0, 299.9, 300])
def test_up_to_300_seconds_either_way_is_recent(skew: float) -> None:
    verify(SECRET, headers(), BODY, NOW + skew)


@pytest.mark.parametrize(
    ("skew", "words"), [(301, "301 s old"), (-301, "301 s in the future"), (10**6, "old")]
)
def test_more_than_300_seconds_either_way_is_refused(skew: float, words: str) -> None:
    assert words in refusal(headers(), now=NOW + skew)


def test_a_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"text=", b"text=deploy+payments%402.4.0+to+prod")
    assert "does not match" in refusal(headers(), body=tampered)


def test_a_body_with_one_more_byte_is_refused() -> None:
    assert "does not match" in refusal(headers(), body=BODY + b"&")


def test_another_secret_is_refused() -> None:
    assert "does not match" in refusal(headers(), secret="8f742231b10e8888abcd99yyyzzz85a6")


def test_a_signature_over_another_timestamp_is_refused() -> None:
    # Replaying the body with a fresh timestamp: the timestamp is part of what is signed.
    assert "does not match" in refusal(headers(timestamp="1531420619"))


def test_an_empty_secret_is_refused_before_anything_else() -> None:
    assert "no signing secret" in refusal(headers(), secret="")


@pytest.mark.parametrize("missing", ["X-Slack-Request-Timestamp", "X-Slack-Signature"])
def test_a_missing_header_is_named(missing: str) -> None:
    given = {k: v for k, v in headers().items() if k != missing}
    assert refusal(given) == f"missing {missing} header"


def test_no_headers_at_all_is_refused() -> None:
    assert "missing" in refusal({})


@pytest.mark.parametrize(
    "timestamp", ["", "soon", "1531420618.5", "+1531420618", "-1", FULLWIDTH_TIMESTAMP, "1e9"]
)
def test_a_timestamp_that_is_not_whole_seconds_is_refused(timestamp: str) -> None:
    assert "not a whole number of seconds" in refusal(headers(timestamp=timestamp))


@pytest.mark.parametrize(
    "signature",
    [
        "",
        SIGNATURE[3:],  # no version
        "v1=" + SIGNATURE[3:],
        SIGNATURE[:-1],  # 63 digits
        SIGNATURE + "0",  # 65 digits
        SIGNATURE[:-1] + "g",
        "v0=" + "é" * 64,
    ],
)
def test_a_signature_of_the_wrong_form_is_refused(signature: str) -> None:
    assert "not of the form v0=<64 hex digits>" in refusal(headers(signature=signature))


def test_a_header_given_twice_with_different_values_is_refused() -> None:
    doubled = {**headers(), "x-slack-signature": "v0=" + "0" * 64}
    assert "more than once" in refusal(doubled)
