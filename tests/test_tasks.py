"""The task lifecycle table and the predicates the coordinator decides with.

Two tests pin the predecessor's bugs: a QA failure always has a legal route through
debugging back to qa_pending, and a failed task is retried until max_attempts and
then skipped."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import IllegalTransition
from engine.machines.machine import reachable
from engine.machines.tasks import (
    DONE,
    TASK_STATUSES,
    TASK_TABLE,
    TaskInfo,
    blocked_for_good,
    blocking_dependencies,
    check_status_change,
    count_facts,
    is_done,
    is_open,
    is_ready,
    next_status_after_failure,
    ready_tasks,
    should_block,
    should_unblock,
    survey,
)
from projections.sequence import PersistentMap

# Written out by hand: (from, to) -> trigger. Guarded moves are marked below.
EXPECTED: dict[tuple[str, str], str] = {
    ("new", "in_progress"): "begin",
    ("in_progress", "qa_pending"): "submit",
    ("qa_failed", "qa_pending"): "submit",
    ("qa_pending", "completed"): "approve",
    ("qa_pending", "qa_failed"): "reject",
    ("qa_failed", "in_progress"): "rework",
    ("in_progress", "failed"): "fail",
    ("qa_failed", "failed"): "fail",
    ("failed", "in_progress"): "retry",
    ("failed", "skipped"): "skip",
    ("blocked", "skipped"): "skip",
    ("new", "blocked"): "block",
    ("in_progress", "blocked"): "block",
    ("blocked", "new"): "unblock",
}
NEEDS_ATTEMPTS = {("failed", "in_progress"), ("failed", "skipped")}

PAIRS = list(itertools.product(TASK_STATUSES, repeat=2))


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_every_status_change_is_allowed_or_refused_as_specified(current: str, new: str) -> None:
    expected = EXPECTED.get((current, new))
    if expected is None:
        with pytest.raises(IllegalTransition):
            check_status_change(current, new, attempts=1, max_attempts=3)
        return
    attempts = 3 if new == "skipped" and current == "failed" else 1
    assert check_status_change(current, new, attempts=attempts, max_attempts=3) == expected


def test_a_qa_failure_always_has_a_route_through_debugging_back_to_qa() -> None:
    assert check_status_change("qa_pending", "qa_failed") == "reject"
    # fixed directly while debugging
    assert check_status_change("qa_failed", "qa_pending") == "submit"
    # or re-coded while debugging, then submitted again
    assert check_status_change("qa_failed", "in_progress") == "rework"
    assert check_status_change("in_progress", "qa_pending") == "submit"
    # and qa_failed is never a dead end in the table
    assert "qa_pending" in reachable(TASK_TABLE, "qa_failed")
    assert "completed" in reachable(TASK_TABLE, "qa_failed")


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_a_failed_task_is_retried_until_max_attempts_then_skipped(max_attempts: int) -> None:
    status, attempts, history = "new", 0, []
    check_status_change(status, "in_progress")
    status = "in_progress"
    while not is_done(status):
        assert status == "in_progress"  # begun, or put back by the retry
        attempts += 1
        check_status_change("in_progress", "failed")
        status = next_status_after_failure(attempts, max_attempts)
        check_status_change("failed", status, attempts=attempts, max_attempts=max_attempts)
        history.append(status)
    assert attempts == max_attempts
    assert history == ["in_progress"] * (max_attempts - 1) + ["skipped"]


def test_retry_past_the_limit_and_skip_before_it_are_refused() -> None:
    with pytest.raises(IllegalTransition, match="attempts_left"):
        check_status_change("failed", "in_progress", attempts=3, max_attempts=3)
    with pytest.raises(IllegalTransition, match="attempts_exhausted"):
        check_status_change("failed", "skipped", attempts=1, max_attempts=3)
    with pytest.raises(IllegalTransition, match="no facts"):
        check_status_change("failed", "in_progress")  # the limit must be stated


@given(attempts=st.integers(0, 20), max_attempts=st.integers(1, 20))
def test_exactly_one_way_out_of_failed_and_it_is_next_status_after_failure(
    attempts: int, max_attempts: int
) -> None:
    legal = []
    for status in ("in_progress", "skipped"):
        try:
            check_status_change("failed", status, attempts=attempts, max_attempts=max_attempts)
            legal.append(status)
        except IllegalTransition:
            pass
    assert legal == [next_status_after_failure(attempts, max_attempts)]


def test_done_statuses_are_final() -> None:
    assert set(TASK_TABLE.final) == DONE == {"completed", "skipped"}
    for status, new in itertools.product(DONE, TASK_STATUSES):
        with pytest.raises(IllegalTransition, match="is final"):
            check_status_change(status, new)


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="unknown status 'pending'"):
        check_status_change("pending", "completed")


def test_the_refusal_names_the_legal_next_statuses() -> None:
    with pytest.raises(IllegalTransition, match="from 'new' it may go to: in_progress, blocked"):
        check_status_change("new", "completed")


def test_done_and_open() -> None:
    assert is_done("completed") and is_done("skipped")
    assert not any(is_done(s) for s in ("new", "failed", "blocked", "qa_failed"))
    assert all(is_open(s) != is_done(s) for s in TASK_STATUSES)


def tasks(**spec: tuple[str, tuple[str, ...]]) -> dict[str, TaskInfo]:
    return {k: TaskInfo(task_id=k, status=s, dependencies=d) for k, (s, d) in spec.items()}


def test_ready_means_new_or_in_progress_with_every_dependency_completed() -> None:
    board = tasks(
        a=("completed", ()),
        b=("new", ("a",)),
        c=("in_progress", ()),
        d=("new", ("b",)),
        e=("qa_pending", ()),
        f=("new", ("missing",)),
    )
    assert [t.task_id for t in ready_tasks(board)] == ["b", "c"]
    assert is_ready(board["b"], list(board.values()))  # a list works as well as a dict
    assert not is_ready(board["f"], board)


def test_blocking_follows_failed_skipped_blocked_and_unknown_dependencies() -> None:
    board = tasks(
        a=("failed", ()),
        b=("new", ("a",)),
        c=("skipped", ()),
        d=("blocked", ("c",)),
        e=("in_progress", ("d",)),
        f=("blocked", ("g",)),
        g=("in_progress", ()),
        h=("new", ("nope",)),
    )
    assert blocking_dependencies(board["b"], board) == ("a",)
    assert should_block(board["b"], board)
    assert should_block(board["e"], board)  # d is blocked, so e cannot run either
    assert should_block(board["h"], board)
    assert not should_block(board["g"], board)
    assert should_unblock(board["f"], board)
    assert not should_unblock(board["d"], board)
    assert blocked_for_good(board["d"], board)
    assert not blocked_for_good(board["f"], board)
    assert check_status_change("blocked", "skipped") == "skip"


def test_count_facts() -> None:
    board = tasks(
        a=("completed", ()),
        b=("qa_failed", ()),
        c=("qa_pending", ()),
        d=("new", ("a",)),
        e=("skipped", ()),
    )
    assert count_facts(board) == {
        "total": 5,
        "open": 3,
        "ready": 1,
        "qa_pending": 1,
        "qa_failed": 1,
    }
    assert count_facts([]) == {"total": 0, "open": 0, "ready": 0, "qa_pending": 0, "qa_failed": 0}


BOARDS = st.lists(
    st.tuples(
        st.sampled_from((*TASK_STATUSES, "unheard-of")),
        st.lists(st.sampled_from("abcdefgx"), max_size=3, unique=True),  # x: no such task
    ),
    max_size=7,
)


@given(BOARDS)
def test_a_survey_sorts_the_tasks_as_the_predicates_do_in_one_pass(
    spec: list[tuple[str, list[str]]],
) -> None:
    board = {
        k: TaskInfo(task_id=k, status=status, dependencies=tuple(deps))
        for k, (status, deps) in zip("abcdefg", spec, strict=False)
    }
    tasks = list(board.values())
    found = survey(PersistentMap(board))

    assert found == survey(tasks) == survey(board)
    assert list(found.ready) == [t for t in tasks if is_ready(t, board)] == ready_tasks(board)
    assert list(found.qa_pending) == [t for t in tasks if t.status == "qa_pending"]
    assert list(found.qa_failed) == [t for t in tasks if t.status == "qa_failed"]
    # every task the rules may have to move first, in the log's order
    assert list(found.unsettled) == [
        t for t in tasks if t.status in ("failed", "qa_failed", "blocked") or should_block(t, board)
    ]
    assert not any(
        should_unblock(t, board) or blocked_for_good(t, board)
        for t in tasks
        if t not in found.unsettled
    )
    assert (found.total, found.done, found.completed) == (
        len(tasks),
        sum(is_done(t.status) for t in tasks),
        sum(t.status == "completed" for t in tasks),
    )


def test_the_table_draws_as_mermaid() -> None:
    lines = TASK_TABLE.mermaid().splitlines()
    for (current, new), trigger in EXPECTED.items():
        assert any(line.startswith(f"    {current} --> {new}: {trigger}") for line in lines)
