"""The worker and pool state machines: the transition tables, the history, and model-based runs.

The tables are the single source of truth (DESIGN.md, rule 1), so these tests check the tables'
shape (what is legal, what is terminal, what is reachable only how) and that the machine applies
them exactly: an illegal event raises and changes nothing; a legal one moves to the table's state
and, if the state changed, records one history entry stamped by the injected clock.
"""

from __future__ import annotations

import collections
import enum
import itertools
from collections.abc import Collection, Mapping
from typing import TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from poolkit._state import (
    POOL_TRANSITIONS,
    WORKER_TRANSITIONS,
    IllegalTransition,
    PoolEvent,
    PoolState,
    PoolStateMachine,
    StateMachine,
    Transition,
    WorkerEvent,
    WorkerState,
    WorkerStateMachine,
)

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)

W, WE = WorkerState, WorkerEvent
P, PE = PoolState, PoolEvent


class FakeClock:
    """An injected clock: returns ``now`` and counts how often it was read."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def path_to(
    table: Mapping[tuple[S, E], S], initial: S, goal: S, *, avoid: Collection[E] = ()
) -> list[E] | None:
    """The shortest list of events leading from ``initial`` to ``goal`` in ``table``, not using
    the events in ``avoid``; None if there is none."""
    paths: dict[S, list[E]] = {initial: []}
    todo = collections.deque([initial])
    while todo:
        state = todo.popleft()
        if state is goal:
            return paths[state]
        for (source, event), target in table.items():
            if source is state and event not in avoid and target not in paths:
                paths[target] = [*paths[state], event]
                todo.append(target)
    return None


def drive(machine: StateMachine[S, E], table: Mapping[tuple[S, E], S], goal: S) -> None:
    """Fire the events of the shortest legal path from the machine's state to ``goal``."""
    events = path_to(table, machine.state, goal)
    assert events is not None, f"{goal} is unreachable"
    for event in events:
        machine.fire(event)
    assert machine.state is goal


ILLEGAL_WORKER = [(s, e) for s in WorkerState for e in WorkerEvent if (s, e) not in WORKER_TRANSITIONS]
ILLEGAL_POOL = [(s, e) for s in PoolState for e in PoolEvent if (s, e) not in POOL_TRANSITIONS]


def _ids(pair: tuple[enum.Enum, enum.Enum]) -> str:
    return f"{pair[0].name}-{pair[1].name}"


# --------------------------------------------------------------------------- worker table


@pytest.mark.parametrize("pair", ILLEGAL_WORKER, ids=_ids)
def test_illegal_worker_transition_raises_and_changes_nothing(pair: tuple[WorkerState, WorkerEvent]) -> None:
    """Every (state, event) not in WORKER_TRANSITIONS raises IllegalTransition naming both, and leaves
    the state, the history and the clock untouched."""
    state, event = pair
    clock = FakeClock()
    machine = WorkerStateMachine("w1", clock=clock)
    drive(machine, WORKER_TRANSITIONS, state)
    history, reads = machine.history, clock.reads
    assert not machine.can(event)
    with pytest.raises(IllegalTransition) as info:
        machine.fire(event, "probe")
    assert (info.value.machine, info.value.state, info.value.event) == ("w1", state, event)
    assert str(info.value) == f"w1: no transition from {state.name} on {event.name}"
    assert machine.state is state
    assert machine.history == history
    assert clock.reads == reads


@pytest.mark.parametrize("pair", list(WORKER_TRANSITIONS), ids=_ids)
def test_legal_worker_transition_goes_where_the_table_says(pair: tuple[WorkerState, WorkerEvent]) -> None:
    """Every (state, event) in WORKER_TRANSITIONS is reachable, allowed by can(), and fire() moves the
    machine to (and returns) exactly the table's target state."""
    state, event = pair
    machine = WorkerStateMachine("w1", clock=FakeClock())
    drive(machine, WORKER_TRANSITIONS, state)
    assert machine.can(event)
    assert machine.fire(event) is WORKER_TRANSITIONS[pair]
    assert machine.state is WORKER_TRANSITIONS[pair]


def test_terminal_worker_states_have_no_outgoing_transitions() -> None:
    """STOPPED and FAILED are terminal: the table has no entry at all leaving them (not even self-loops)."""
    terminal = {s for s in WorkerState if s.is_terminal}
    assert terminal == {W.STOPPED, W.FAILED}
    assert [pair for pair in WORKER_TRANSITIONS if pair[0] in terminal] == []


def test_every_worker_state_is_reachable_from_spawning() -> None:
    """No state in WorkerState is dead code: each is reachable from the initial SPAWNING state."""
    for state in WorkerState:
        assert path_to(WORKER_TRANSITIONS, W.SPAWNING, state) is not None, state


def test_ready_and_busy_are_reachable_only_through_handshake() -> None:
    """Without the HANDSHAKE event no path leads from SPAWNING to READY or BUSY: a worker can take
    calls only after its READY frame."""
    for state in (W.READY, W.BUSY):
        assert path_to(WORKER_TRANSITIONS, W.SPAWNING, state, avoid={WE.HANDSHAKE}) is None


def test_worker_predicates_derive_from_the_state() -> None:
    """accepts_calls holds exactly in READY and BUSY; is_alive is exactly "not terminal"."""
    assert {s for s in WorkerState if s.accepts_calls} == {W.READY, W.BUSY}
    for state in WorkerState:
        assert state.is_alive is not state.is_terminal


def test_new_worker_machine_starts_spawning_with_empty_history() -> None:
    """A new worker machine is SPAWNING, has no history, and says so in its repr."""
    machine = WorkerStateMachine("w7", clock=FakeClock())
    assert machine.state is W.SPAWNING
    assert machine.history == ()
    assert repr(machine) == "<WorkerStateMachine w7 SPAWNING>"


# --------------------------------------------------------------------------- history


def test_history_records_real_changes_with_the_injected_clock() -> None:
    """Each state change is recorded as Transition(from, to, event, reason, at) with ``at`` read from
    the injected clock at the moment of the change."""
    clock = FakeClock(10.0)
    machine = WorkerStateMachine("w1", clock=clock)
    machine.fire(WE.SPAWNED, "pid 42")
    clock.advance(1.5)
    machine.fire(WE.HANDSHAKE)
    clock.advance(0.25)
    machine.fire(WE.DISPATCH, "call 1")
    assert machine.history == (
        Transition(W.SPAWNING, W.STARTING, WE.SPAWNED, "pid 42", 10.0),
        Transition(W.STARTING, W.READY, WE.HANDSHAKE, "", 11.5),
        Transition(W.READY, W.BUSY, WE.DISPATCH, "call 1", 11.75),
    )
    entry = machine.history[0]
    assert (entry.from_state, entry.to_state, entry.event, entry.reason, entry.at) == tuple(entry)


def test_self_loops_are_legal_but_not_recorded() -> None:
    """A legal self-loop (BUSY --dispatch--> BUSY) returns the same state, adds no history entry and
    does not even read the clock."""
    clock = FakeClock()
    machine = WorkerStateMachine("w1", clock=clock)
    drive(machine, WORKER_TRANSITIONS, W.BUSY)
    history, reads = machine.history, clock.reads
    for _ in range(5):
        assert machine.fire(WE.DISPATCH, "pipelined") is W.BUSY
    assert machine.history == history
    assert clock.reads == reads


def test_flip_follows_the_table_but_leaves_the_history_and_the_hook_alone_unless_asked() -> None:
    """``flip`` (a worker's per-call READY <-> BUSY) changes state exactly as ``fire`` would and
    refuses what the table refuses, but records nothing and reads no clock; the hook hears of
    it only with ``report=True``, as a Transition like fire's."""
    clock = FakeClock(5.0)
    machine = WorkerStateMachine("w1", clock=clock)
    drive(machine, WORKER_TRANSITIONS, W.READY)
    heard: list[Transition[WorkerState, WorkerEvent]] = []
    machine.on_change = heard.append
    history, reads = machine.history, clock.reads
    for _ in range(20):
        assert machine.flip(WE.DISPATCH, report=False) is W.BUSY
        assert machine.flip(WE.IDLE, report=False) is W.READY
    assert machine.history == history
    assert clock.reads == reads
    assert heard == []
    assert machine.flip(WE.DISPATCH, report=True) is W.BUSY
    assert heard == [Transition(W.READY, W.BUSY, WE.DISPATCH, "", 5.0)]
    assert machine.history == history
    with pytest.raises(IllegalTransition):
        machine.flip(WE.HANDSHAKE, report=False)
    assert machine.state is W.BUSY


def test_history_is_bounded_and_keeps_the_latest_changes() -> None:
    """With history=4, only the last four changes are kept, oldest first."""
    clock = FakeClock(0.0)
    machine = WorkerStateMachine("w1", history=4, clock=clock)
    drive(machine, WORKER_TRANSITIONS, W.READY)
    for i in range(10):
        clock.now = float(i)
        machine.fire(WE.DISPATCH, f"call {i}")
        machine.fire(WE.IDLE, f"done {i}")
    assert [(t.from_state, t.to_state, t.reason, t.at) for t in machine.history] == [
        (W.READY, W.BUSY, "call 8", 8.0),
        (W.BUSY, W.READY, "done 8", 8.0),
        (W.READY, W.BUSY, "call 9", 9.0),
        (W.BUSY, W.READY, "done 9", 9.0),
    ]


# --------------------------------------------------------------------------- pool table


@pytest.mark.parametrize("pair", ILLEGAL_POOL, ids=_ids)
def test_illegal_pool_transition_raises_and_changes_nothing(pair: tuple[PoolState, PoolEvent]) -> None:
    """Every (state, event) not in POOL_TRANSITIONS raises IllegalTransition and changes nothing."""
    state, event = pair
    machine = PoolStateMachine("pool", clock=FakeClock())
    drive(machine, POOL_TRANSITIONS, state)
    history = machine.history
    with pytest.raises(IllegalTransition) as info:
        machine.fire(event)
    assert (info.value.machine, info.value.state, info.value.event) == ("pool", state, event)
    assert machine.state is state
    assert machine.history == history


@pytest.mark.parametrize("pair", list(POOL_TRANSITIONS), ids=_ids)
def test_legal_pool_transition_goes_where_the_table_says(pair: tuple[PoolState, PoolEvent]) -> None:
    """Every (state, event) in POOL_TRANSITIONS is reachable and moves the pool to the table's state."""
    state, event = pair
    machine = PoolStateMachine("pool", clock=FakeClock())
    drive(machine, POOL_TRANSITIONS, state)
    assert machine.fire(event) is POOL_TRANSITIONS[pair]


def test_closed_pool_only_accepts_a_repeated_close() -> None:
    """CLOSED is terminal: its only entry is CLOSE -> CLOSED (closing twice is harmless)."""
    assert {pair: target for pair, target in POOL_TRANSITIONS.items() if pair[0] is P.CLOSED} == {
        (P.CLOSED, PE.CLOSE): P.CLOSED
    }


def test_closed_is_entered_only_from_draining_or_created() -> None:
    """The only ways into CLOSED are DRAINING --closed--> and CREATED --close--> (never started)."""
    into_closed = {pair for pair, target in POOL_TRANSITIONS.items() if target is P.CLOSED}
    assert into_closed == {(P.DRAINING, PE.CLOSED), (P.CREATED, PE.CLOSE), (P.CLOSED, PE.CLOSE)}


def test_pool_accepts_calls_only_while_running() -> None:
    """PoolState.accepts_calls is true in RUNNING and nowhere else."""
    assert {s for s in PoolState if s.accepts_calls} == {P.RUNNING}


def test_pool_history_records_the_lifecycle() -> None:
    """The pool machine records its changes like the worker machine, skipping self-loops."""
    clock = FakeClock(0.0)
    machine = PoolStateMachine("pool", clock=clock)
    for event in (PE.START, PE.STARTED, PE.CLOSE, PE.CLOSE, PE.BROKEN, PE.CLOSED, PE.CLOSE):
        clock.advance(1.0)
        machine.fire(event)
    assert [(t.from_state, t.to_state, t.event, t.at) for t in machine.history] == [
        (P.CREATED, P.STARTING, PE.START, 1.0),
        (P.STARTING, P.RUNNING, PE.STARTED, 2.0),
        (P.RUNNING, P.DRAINING, PE.CLOSE, 3.0),
        (P.DRAINING, P.CLOSED, PE.CLOSED, 6.0),
    ]


# --------------------------------------------------------------------------- model-based: worker

HISTORY = 6
#: The events the pool fires for reasons other than its calls starting and ending.
LIFECYCLE_EVENTS = [e for e in WorkerEvent if e not in (WE.DISPATCH, WE.IDLE)]


def _check_history(machine: StateMachine[S, E], table: Mapping[tuple[S, E], S], changes: int) -> None:
    """History entries are legal table moves, chained (each to_state is the next from_state), end at the
    current state, have non-decreasing timestamps, and number min(changes, maxlen)."""
    history = machine.history
    assert len(history) == min(changes, HISTORY)
    for entry in history:
        assert entry.from_state is not entry.to_state
        assert table[(entry.from_state, entry.event)] is entry.to_state
    for before, after in itertools.pairwise(history):
        assert before.to_state is after.from_state
        assert before.at <= after.at
    if history:
        assert history[-1].to_state is machine.state


@settings(max_examples=150, stateful_step_count=40, deadline=None)
class WorkerMachine(RuleBasedStateMachine):
    """Random lifecycles of one worker, run next to an independent model of its in-flight calls.

    The model: calls are dispatched only when the worker accepts calls; each call ends once; when the
    last in-flight call ends the pool fires IDLE; when the worker reaches a terminal state the pool
    fails whatever was in flight. Legal lifecycle events (spawn, handshake, drain, stop, kill,
    exit...) arrive at random; after every step, every event the table refuses is tried too. A
    worker that reached a terminal state is replaced by a new one, as the pool does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.generation = 0
        self._new_worker()

    def _new_worker(self) -> None:
        self.generation += 1
        self.machine = WorkerStateMachine(f"w-{self.generation}", history=HISTORY, clock=self.clock)
        self.in_flight = 0
        self.changes = 0
        self.handshaken = False
        self.terminal: WorkerState | None = None

    def _fire(self, event: WorkerEvent, reason: str = "") -> None:
        """Fire a legal ``event``; check the result against the table, the history and the clock."""
        before = self.machine.state
        expected = WORKER_TRANSITIONS[(before, event)]
        assert self.machine.fire(event, reason) is expected
        if expected is not before:
            self.changes += 1
            assert self.machine.history[-1] == Transition(before, expected, event, reason, self.clock.now)
        if event is WE.HANDSHAKE:
            self.handshaken = True
        if expected.is_terminal:
            self.in_flight = 0  # the pool fails the calls the dead worker held
            self.terminal = expected

    @precondition(lambda self: self.machine.state.accepts_calls)
    @rule(seconds=st.floats(min_value=0, max_value=60))
    def dispatch(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self._fire(WE.DISPATCH, f"call {self.in_flight + 1}")
        self.in_flight += 1
        assert self.machine.state is W.BUSY

    @precondition(lambda self: self.in_flight > 0)
    @rule(seconds=st.floats(min_value=0, max_value=60))
    def call_ends(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.in_flight -= 1
        if self.in_flight == 0:
            before = self.machine.state
            assert self.machine.can(WE.IDLE), f"IDLE must be legal in {before} when the last call ends"
            self._fire(WE.IDLE)
            assert self.machine.state is (W.READY if before is W.BUSY else before)

    @precondition(lambda self: self.machine.state in (W.SPAWNING, W.STARTING))
    @rule(seconds=st.floats(min_value=0, max_value=60))
    def startup_succeeds(self, seconds: float) -> None:
        """The common path, made as likely as the faults: the process starts and sends READY."""
        self.clock.advance(seconds)
        self._fire(WE.SPAWNED if self.machine.state is W.SPAWNING else WE.HANDSHAKE, "startup")

    @precondition(lambda self: not self.machine.state.is_terminal)
    @rule(data=st.data(), seconds=st.floats(min_value=0, max_value=60))
    def lifecycle_event(self, data: st.DataObject, seconds: float) -> None:
        """A lifecycle event the table allows now (spawn, handshake, drain, stop, kill, exit...)."""
        self.clock.advance(seconds)
        legal = [e for e in LIFECYCLE_EVENTS if self.machine.can(e)]
        self._fire(data.draw(st.sampled_from(legal), label="event"), "lifecycle")

    @precondition(lambda self: self.machine.state.is_terminal)
    @rule(seconds=st.floats(min_value=0, max_value=60))
    def replace_dead_worker(self, seconds: float) -> None:
        """The pool replaces a worker that reached STOPPED or FAILED with a new one, SPAWNING."""
        self.clock.advance(seconds)
        self._new_worker()
        assert self.machine.state is W.SPAWNING
        assert self.machine.history == ()

    @invariant()
    def refused_events_change_nothing(self) -> None:
        """Every event the table does not allow now (a premature DISPATCH or IDLE included) raises
        IllegalTransition and leaves state and history as they were."""
        state, history = self.machine.state, self.machine.history
        for event in WorkerEvent:
            if (state, event) not in WORKER_TRANSITIONS:
                with pytest.raises(IllegalTransition):
                    self.machine.fire(event)
                assert self.machine.state is state
                assert self.machine.history == history

    @invariant()
    def state_is_a_worker_state(self) -> None:
        assert isinstance(self.machine.state, WorkerState)

    @invariant()
    def terminal_states_are_absorbing(self) -> None:
        if self.terminal is not None:
            assert self.machine.state is self.terminal
            assert not any(self.machine.can(event) for event in WorkerEvent)

    @invariant()
    def accepts_calls_only_when_ready_or_busy(self) -> None:
        assert self.machine.state.accepts_calls == (self.machine.state in (W.READY, W.BUSY))

    @invariant()
    def busy_exactly_when_calls_are_in_flight(self) -> None:
        if self.machine.state.accepts_calls:
            assert (self.machine.state is W.BUSY) == (self.in_flight > 0)

    @invariant()
    def ready_or_busy_only_after_handshake(self) -> None:
        if self.machine.state in (W.READY, W.BUSY):
            assert self.handshaken

    @invariant()
    def history_is_a_bounded_chain_of_real_changes(self) -> None:
        _check_history(self.machine, WORKER_TRANSITIONS, self.changes)


TestWorkerMachine = WorkerMachine.TestCase


# --------------------------------------------------------------------------- model-based: pool


@settings(max_examples=100, stateful_step_count=30, deadline=None)
class PoolMachine(RuleBasedStateMachine):
    """Random pool lifecycle events, legal or not: CLOSED is reached only from DRAINING (or straight
    from CREATED) and, once reached, never left."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.machine = PoolStateMachine("pool-model", history=HISTORY, clock=self.clock)
        self.changes = 0
        self.closed = False

    @rule(event=st.sampled_from(PoolEvent), seconds=st.floats(min_value=0, max_value=5))
    def event(self, event: PoolEvent, seconds: float) -> None:
        self.clock.advance(seconds)
        before = self.machine.state
        if not self.machine.can(event):
            with pytest.raises(IllegalTransition):
                self.machine.fire(event)
            assert self.machine.state is before
            return
        after = self.machine.fire(event)
        assert after is POOL_TRANSITIONS[(before, event)]
        if after is not before:
            self.changes += 1
        if after is P.CLOSED and before is not P.CLOSED:
            assert before in (P.DRAINING, P.CREATED)
            self.closed = True

    @invariant()
    def closed_stays_closed(self) -> None:
        if self.closed:
            assert self.machine.state is P.CLOSED
            assert [e for e in PoolEvent if self.machine.can(e)] == [PE.CLOSE]

    @invariant()
    def accepts_calls_only_while_running(self) -> None:
        assert self.machine.state.accepts_calls == (self.machine.state is P.RUNNING)

    @invariant()
    def history_is_a_bounded_chain_of_real_changes(self) -> None:
        _check_history(self.machine, POOL_TRANSITIONS, self.changes)
        for entry in self.machine.history:
            if entry.to_state is P.CLOSED:
                assert entry.from_state in (P.DRAINING, P.CREATED)


TestPoolMachine = PoolMachine.TestCase
