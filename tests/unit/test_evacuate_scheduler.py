"""The evacuation's scheduler (kvmgr.control.moves.run_bounded) with fake moves: never more
than ``parallel`` in flight, the plan's order kept, a failure stops new starts while the moves
running finish, and a cancel reaches the moves in flight."""

from __future__ import annotations

import threading
import time

import pytest

from kvmgr.control.moves import (
    CANCELLED,
    FAILED,
    MOVED,
    NOT_STARTED,
    MoveOutcome,
    MoveReport,
    run_bounded,
)
from kvmgr.errors import InvalidInput, InvalidState


def _outcomes(count: int) -> list[MoveOutcome]:
    return [MoveOutcome(f"vm{i}", "h2", live=True) for i in range(count)]


class FakeMoves:
    """Moves that take ``seconds`` each; ``fail`` names the VMs whose move raises."""

    def __init__(self, seconds: float = 0.05, fail: frozenset[str] = frozenset()) -> None:
        self.seconds, self.fail = seconds, fail
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most = 0
        self.order: list[str] = []

    def __call__(self, outcome: MoveOutcome) -> MoveReport:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.order.append(outcome.vm)
        try:
            time.sleep(self.seconds)
            if outcome.vm in self.fail:
                raise InvalidState(f"no room for {outcome.vm}")
            return None  # type: ignore[return-value]  # the outcome's report is not looked at
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_at_most_parallel_moves_run_at_once_in_plan_order(parallel: int) -> None:
    outcomes, moves = _outcomes(6), FakeMoves()
    run_bounded(outcomes, moves, parallel, threading.Event())
    assert moves.most == parallel
    assert moves.order == [f"vm{i}" for i in range(6)]
    assert [o.state for o in outcomes] == [MOVED] * 6
    assert all(o.started and o.finished and o.started < o.finished for o in outcomes)
    if parallel == 2:  # the first two overlap in time; the third starts after one ended
        first, second, third = outcomes[:3]
        assert first.started and second.started and first.finished and third.started
        assert second.started < first.finished
        assert third.started >= min(first.finished, second.finished or first.finished)


def test_a_failure_starts_no_more_moves_and_the_running_one_finishes() -> None:
    outcomes = _outcomes(5)
    # vm0 fails fast while vm1 is still moving: vm1 finishes, vm2.. never start.
    slow = FakeMoves(seconds=0.3, fail=frozenset({"vm0"}))
    fast_fail = FakeMoves(seconds=0.0, fail=frozenset({"vm0"}))

    def move(outcome: MoveOutcome) -> MoveReport:
        return (fast_fail if outcome.vm == "vm0" else slow)(outcome)

    run_bounded(outcomes, move, 2, threading.Event())
    states = {o.vm: o.state for o in outcomes}
    assert states == {
        "vm0": FAILED, "vm1": MOVED, "vm2": NOT_STARTED, "vm3": NOT_STARTED, "vm4": NOT_STARTED,
    }  # fmt: skip
    assert outcomes[0].error == "no room for vm0"
    assert outcomes[2].started is None


def test_a_cancel_marks_the_moves_it_stopped_cancelled() -> None:
    outcomes, cancel = _outcomes(3), threading.Event()

    def move(outcome: MoveOutcome) -> MoveReport:
        cancel.set()  # as an API cancel would, while this move runs
        raise InvalidState("migration aborted; it runs on the source, unchanged")

    run_bounded(outcomes, move, 1, cancel)
    assert [o.state for o in outcomes] == [CANCELLED, NOT_STARTED, NOT_STARTED]


def test_changed_hears_each_start_and_end() -> None:
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def changed(outcome: MoveOutcome) -> None:
        with lock:
            seen.append((outcome.vm, outcome.state))

    run_bounded(_outcomes(2), FakeMoves(), 1, threading.Event(), changed)
    assert seen == [("vm0", "moving"), ("vm0", MOVED), ("vm1", "moving"), ("vm1", MOVED)]


@pytest.mark.parametrize("parallel", [0, 9])
def test_parallel_out_of_bounds_is_refused(parallel: int) -> None:
    with pytest.raises(InvalidInput, match="parallel must be 1 to 8"):
        run_bounded(_outcomes(1), FakeMoves(), parallel, threading.Event())
