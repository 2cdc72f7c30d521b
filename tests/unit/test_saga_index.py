"""Property: the saga's index of a release answers as a walk over every component would.

Whatever the components' moves, in whatever order, and whichever version of the release
it is asked about (the newest, or one before it, as a decision taken again after a
conflict asks), told of a move or left to find it: what may start, what may be undone,
what could not be put back, how many are in each status, the next deadline, each one's
place, and what changed from one version to another.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.saga import ComponentState, ComponentStatus
from orchestrator.saga.index import HOLDING, NOT_STARTED, TO_UNDO, ComponentIndex
from tests.unit.builders import T0

Components = Mapping[str, ComponentState]


@st.composite
def releases(draw: st.DrawFn) -> dict[str, ComponentState]:
    """Up to eight components, each depending on some listed before it."""
    size = draw(st.integers(min_value=1, max_value=8))
    names = [f"s{i}" for i in range(size)]
    components: dict[str, ComponentState] = {}
    for i, name in enumerate(names):
        needs = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        components[name] = ComponentState(service=name, version="2.0.0", depends_on=tuple(needs))
    order = draw(st.permutations(names))
    return {name: components[name] for name in order}


def moves(names: list[str]) -> st.SearchStrategy[tuple[str, ComponentStatus, int | None, bool]]:
    """A component put in any status, with a deadline (seconds from T0) or none, restored
    or not: the index must hold for any, not only the saga's own moves."""
    return st.tuples(
        st.sampled_from(names),
        st.sampled_from(list(ComponentStatus)),
        st.one_of(st.none(), st.integers(0, 50)),
        st.booleans(),
    )


def _moved(
    component: ComponentState, status: ComponentStatus, at: int | None, restored: bool
) -> ComponentState:
    deadline = None if at is None else T0 + timedelta(seconds=at)
    return component.model_copy(
        update={"status": status, "deadline": deadline, "restored": restored}
    )


def _walked(components: Components) -> dict[str, object]:
    """The answers, found the long way."""
    every = list(components.values())
    dependents = {name: [c for c in every if name in c.depends_on] for name in components}
    deadlines = [c.deadline for c in every if c.deadline is not None]
    return {
        "counts": {s: sum(c.status is s for c in every) for s in ComponentStatus},
        "ready": [
            c
            for c in every
            if c.status in NOT_STARTED
            and all(components[d].status is ComponentStatus.DEPLOYED for d in c.depends_on)
        ],
        "undoable": [
            c
            for c in every
            if c.status in TO_UNDO and not any(d.status in HOLDING for d in dependents[c.name])
        ],
        "not_put_back": [
            c
            for c in every
            if c.status is ComponentStatus.ROLLBACK_FAILED
            or (c.status is ComponentStatus.FAILED and not c.restored)
        ],
        "next_deadline": min(deadlines, default=None),
        "places": {name: place for place, name in enumerate(components)},
    }


def _asked(index: ComponentIndex, components: Components) -> dict[str, object]:
    return {
        "counts": {s: index.count(components, s) for s in ComponentStatus},
        "ready": index.ready(components),
        "undoable": index.undoable(components),
        "not_put_back": index.not_put_back(components),
        "next_deadline": index.next_deadline(components),
        "places": dict(index.places(components)),
    }


@settings(max_examples=300, deadline=None)
@given(start=releases(), data=st.data())
def test_the_index_answers_as_a_walk_over_every_component_does(
    start: dict[str, ComponentState], data: st.DataObject
) -> None:
    index = ComponentIndex(start)
    versions: list[dict[str, ComponentState]] = [start]
    for move in data.draw(st.lists(moves(list(start)), max_size=30)):
        before = versions[-1]
        name, status, at, restored = move
        after = {**before, name: _moved(before[name], status, at, restored)}
        if data.draw(st.booleans(), label="told of the move"):
            index.moved(before, after, [name])
        versions.append(after)
        asked = data.draw(st.sampled_from(versions), label="version asked about")
        assert _asked(index, asked) == _walked(asked)
        changed = index.changed(before, after)
        if changed is not None:
            assert changed == [name]


def test_what_changed_over_several_moves_is_told_while_they_are_remembered() -> None:
    first = {"a": ComponentState(service="a"), "b": ComponentState(service="b")}
    index = ComponentIndex(first)
    second = {**first, "a": first["a"].moved_to(ComponentStatus.DEPLOYING)}
    index.moved(first, second, ["a"])
    third = {**second, "b": second["b"].moved_to(ComponentStatus.DEPLOYING)}
    index.moved(second, third, ["b"])

    assert index.changed(first, third) == ["b", "a"]
    assert index.changed(second, third) == ["b"]
    assert index.changed(third, second) is None  # not the way it moved: walk instead


def test_a_version_with_other_components_is_indexed_afresh() -> None:
    whole = {"a": ComponentState(service="a"), "b": ComponentState(service="b", depends_on=("a",))}
    index = ComponentIndex(whole)
    part = {"b": whole["b"]}  # a release loaded with one component only

    assert index.ready(part) == []  # its dependency is not known to be deployed
    assert index.ready(whole) == [whole["a"]]
