"""Message ids: a derived id is the same as every earlier Drover derived for the same
cause and purpose (uuid5 under the OID namespace, as it always was: a worker of another
version carrying a command on must derive the ids this one did), and a fresh id is a
random UUID, version 4, never the same twice."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.contract import derived_id, random_id


@given(cause=st.text(), purpose=st.one_of(st.text(), st.integers()))
def test_a_derived_id_is_the_uuid5_drover_always_derived(cause: str, purpose: str | int) -> None:
    assert derived_id(cause, purpose) == uuid.uuid5(uuid.NAMESPACE_OID, f"{cause}/{purpose}").hex


def test_a_fresh_id_is_a_random_uuid_never_made_twice() -> None:
    made = [random_id() for _ in range(2000)]

    assert len(set(made)) == len(made)
    for made_id in made:
        parsed = uuid.UUID(hex=made_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, made_id)
