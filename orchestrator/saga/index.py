"""What the saga asks of a release's components after every event, kept by what changed.

A release hears one outcome at a time, and after each the saga asks which components may
start, whether all are deployed, which may be undone and when the next deadline is.
Found by walking every component, an outcome cost what the release's width did (a third
of a millisecond at a thousand components, three and a half at ten thousand), and a
chain's rollback the square of its length. The index answers from sets it keeps, and
moves from one version of the release's components to the next by what differs between
them.

The versions of one release share one index: it rides along on the state
(:attr:`~orchestrator.saga.state.ReleaseState.index`), which every copy the saga makes
carries. Asked about components it does not describe, it finds the names whose
component is another object (the saga copies a release with the components it did not
touch shared, not copied) in one walk of C's loops, and updates its sets for those
alone: an answer is about the version asked, whichever it is.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import threading
from collections import deque
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Final

from orchestrator.saga.state import ComponentState, ComponentStatus

__all__ = ["HOLDING", "NOT_STARTED", "TO_UNDO", "ComponentIndex"]

NOT_STARTED: Final = frozenset({ComponentStatus.PENDING, ComponentStatus.AWAITING_APPROVAL})
TO_UNDO: Final = frozenset({ComponentStatus.DEPLOYED, ComponentStatus.TIMED_OUT})
# What keeps a component's dependencies from being undone: it may run on them still.
HOLDING: Final = TO_UNDO | {ComponentStatus.ROLLING_BACK}

Components = Mapping[str, ComponentState]

# Moves remembered for :meth:`ComponentIndex.changed`: an outcome's decision makes two
# or three; each keeps the components it moved from alive, so not many.
_TRAIL: Final = 8


class ComponentIndex:
    """The components of one version of a release, grouped as the saga asks about them."""

    def __init__(self, components: Components) -> None:
        self._lock = threading.Lock()  # a coordinator's API threads may read its states
        self._build(components)

    # --- the questions ----------------------------------------------------------------------

    def count(self, components: Components, status: ComponentStatus) -> int:
        """How many of ``components`` are in ``status``."""
        with self._lock:
            self._move_to(components)
            return len(self._by_status[status])

    def ready(self, components: Components) -> list[ComponentState]:
        """Those not started whose dependencies are all deployed, in the release's order."""
        with self._lock:
            self._move_to(components)
            return self._in_order(self._ready)

    def undoable(self, components: Components) -> list[ComponentState]:
        """Those deployed (or timed out) that no dependent still holds, in the release's
        order."""
        with self._lock:
            self._move_to(components)
            return self._in_order(self._undoable)

    def not_put_back(self, components: Components) -> list[ComponentState]:
        """Those whose rollback failed, and those that failed leaving hosts on the new
        version (their worker could not put them back)."""
        with self._lock:
            self._move_to(components)
            return self._in_order(
                self._by_status[ComponentStatus.ROLLBACK_FAILED] | self._unrestored
            )

    def next_deadline(self, components: Components) -> datetime | None:
        """The earliest deadline among ``components``."""
        with self._lock:
            self._move_to(components)
            heap = self._deadlines
            while heap and components[heap[0][1]].deadline != heap[0][0]:
                heapq.heappop(heap)  # that component's deadline has moved since
            return heap[0][0] if heap else None

    def changed(self, before: Components, after: Components) -> list[str] | None:
        """The names whose component differs between ``before`` and ``after``, when this
        index moved from the one to the other in its latest few moves; else None."""
        with self._lock:
            if self._components is not after:
                return None
            names: list[str] = []
            for was, changed in reversed(self._trail):
                names.extend(changed)
                if was is before:  # some may have moved back since: identity tells
                    return [n for n in dict.fromkeys(names) if before.get(n) is not after[n]]
            return None

    def places(self, components: Components) -> Mapping[str, int]:
        """Each component's place in the release (its order, which no version changes)."""
        with self._lock:
            self._move_to(components)
            return self._places

    # --- keeping up ---------------------------------------------------------------------------

    def _build(self, components: Components) -> None:
        self._components = components
        # The latest moves, each from the components before it, naming what it changed.
        self._trail: deque[tuple[Components, tuple[str, ...]]] = deque(maxlen=_TRAIL)
        self._places: Mapping[str, int] = dict(zip(components, itertools.count()))
        self._dependents: dict[str, list[str]] = {name: [] for name in components}
        self._holding_dependents: dict[str, int] = dict.fromkeys(components, 0)
        # A dependency outside the components (a release read in part) is not known to
        # be deployed, and counts as not.
        self._undeployed_needs: dict[str, int] = dict.fromkeys(components, 0)
        for component in components.values():
            for dependency in component.depends_on:
                self._dependents.setdefault(dependency, []).append(component.name)
                self._holding_dependents.setdefault(dependency, 0)
                if dependency not in components:
                    self._undeployed_needs[component.name] += 1
        self._by_status: dict[ComponentStatus, set[str]] = {s: set() for s in ComponentStatus}
        self._unrestored: set[str] = set()
        self._ready: set[str] = set()
        self._undoable: set[str] = set()
        self._deadlines: list[tuple[datetime, str]] = []  # a heap, with stale entries
        touched: set[str] = set()
        for component in components.values():
            self._count(component, +1, touched)
        self._place(touched)

    def moved(self, before: Components, after: Components, names: Collection[str]) -> None:
        """``after`` is ``before`` with the components ``names`` replaced: if this index
        describes ``before``, it follows at the cost of those alone."""
        with self._lock:
            if self._components is before:
                self._apply(after, names)

    def _move_to(self, components: Components) -> None:
        before = self._components
        if components is before:
            return
        differs = map(operator.is_not, map(before.get, components), components.values())
        changed = list(itertools.compress(components, differs))
        if len(components) != len(before) or not all(map(before.__contains__, changed)):
            self._build(components)  # another release, or only some of its components
            return
        self._apply(components, changed)

    def _apply(self, components: Components, changed: Collection[str]) -> None:
        before, self._components = self._components, components
        self._trail.append((before, tuple(changed)))
        touched: set[str] = set()
        for name in changed:
            self._count(before[name], -1, touched)
            self._count(components[name], +1, touched)
        self._place(touched)
        if len(self._deadlines) > 4 * len(components) + 64:  # mostly stale: start afresh
            self._deadlines = [(c.deadline, c.name) for c in components.values() if c.deadline]
            heapq.heapify(self._deadlines)

    def _count(self, component: ComponentState, sign: int, touched: set[str]) -> None:
        """Count ``component`` in (``sign`` 1) or out (-1); what it counts for, and
        itself, go to ``touched``: their place in the sets may have changed."""
        name, status = component.name, component.status
        touched.add(name)
        if sign > 0:
            self._by_status[status].add(name)
            if component.deadline is not None:
                heapq.heappush(self._deadlines, (component.deadline, name))
        else:
            self._by_status[status].discard(name)
        if status is ComponentStatus.FAILED and not component.restored:
            if sign > 0:
                self._unrestored.add(name)
            else:
                self._unrestored.discard(name)
        if status is not ComponentStatus.DEPLOYED:
            dependents = self._dependents[name]
            for dependent in dependents:
                self._undeployed_needs[dependent] += sign
            touched.update(dependents)
        if status in HOLDING:
            for dependency in component.depends_on:
                self._holding_dependents[dependency] += sign
            touched.update(component.depends_on)

    def _place(self, names: Collection[str]) -> None:
        """Put each of ``names`` in, or out of, the ready and undoable sets."""
        components = self._components
        for name in names:
            component = components.get(name)
            if component is None:
                continue  # a dependency outside the components known
            if component.status in NOT_STARTED and self._undeployed_needs[name] == 0:
                self._ready.add(name)
            else:
                self._ready.discard(name)
            if component.status in TO_UNDO and self._holding_dependents[name] == 0:
                self._undoable.add(name)
            else:
                self._undoable.discard(name)

    def _in_order(self, names: Collection[str]) -> list[ComponentState]:
        components = self._components
        return [components[name] for name in sorted(names, key=self._places.__getitem__)]
