"""The folds, one branch at a time, on small hand-written runs; and the persistent
collections the states are made of.

Every run here is appended to a real (in-memory) store, so each test also checks
that ``project`` (history left in the log) and ``fold`` over the recorded events
(history kept in memory) agree.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec.structs import replace

from events import (
    ArbiterDecided,
    Codec,
    Event,
    FileChange,
    MemoryEventStore,
    Message,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    PhaseChanged,
    RunFinished,
    RunForked,
    RunNotFound,
    RunResumed,
    RunRewound,
    RunStarted,
    SpecialistConsulted,
    TaskAdded,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UpcasterRegistry,
    Usage,
    UserAnswered,
    UserAsked,
)
from events.store import RecordedEvent
from projections import (
    EMPTY,
    Appended,
    OrchestrationState,
    PersistentMap,
    PipelineState,
    RunState,
    TaskState,
    apply,
    apply_orchestration,
    apply_pipeline,
    fold,
    project,
)
from projections.sequence import AppendedEditor, MapEditor, freeze_map, freeze_sequence

START = RunStarted(goal="a todo app", workspace="/work/todo", mode="traditional", config={"k": 1})
DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def record(store: MemoryEventStore, run_id: str, *events: Event) -> list[RecordedEvent]:
    """Append ``events`` to ``run_id`` after whatever it already holds."""
    return store.append(run_id, list(events), store.last_version(run_id))


def run(*events: Event, run_id: str = "r1") -> RunState:
    """The state after ``events``, checked to be the same by every way of folding."""
    store = MemoryEventStore()
    recorded = record(store, run_id, *events)
    projected = project(store, run_id)
    assert fold(recorded) == projected
    one_by_one = EMPTY
    for event in recorded:
        one_by_one = apply(one_by_one, event)
    assert one_by_one == projected
    return projected


def request(
    call_id: str,
    *messages: Message,
    offset: int = 0,
    conversation: str = "coder:t1",
    role: str = "coder",
    model: str = "qwen",
    digest: str = DIGEST_A,
    options: dict[str, Any] | None = None,
) -> ModelRequested:
    return ModelRequested(
        call_id=call_id,
        role=role,
        model=model,
        conversation=conversation,
        request_digest=digest,
        message_offset=offset,
        messages=messages,
        options=options if options is not None else {"temperature": 0},
    )


def respond(
    call_id: str, prompt: int = 10, completion: int = 5, ms: float = 100.0
) -> ModelResponded:
    return ModelResponded(
        call_id=call_id,
        content="ok",
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        duration_ms=ms,
    )


def user(text: str) -> Message:
    return Message(role="user", content=text)


# -- run lifecycle -------------------------------------------------------------------------------


def test_run_started_sets_the_goal_and_the_run_is_running() -> None:
    state = run(START)

    pipeline = state.pipeline
    assert (pipeline.run_id, pipeline.goal, pipeline.workspace) == (
        "r1",
        "a todo app",
        "/work/todo",
    )
    assert (pipeline.mode, pipeline.config, pipeline.status) == ("traditional", {"k": 1}, "running")
    assert (state.run_id, state.version) == ("r1", 1)


def test_run_finished_records_status_and_reason() -> None:
    state = run(START, RunFinished(status="no_progress", reason="10 steps without progress"))

    assert (state.pipeline.status, state.pipeline.reason) == (
        "no_progress",
        "10 steps without progress",
    )


def test_a_question_waits_for_input_and_its_answer_resumes_the_run() -> None:
    asked = run(START, UserAsked(question="which database?"))
    answered = run(START, UserAsked(question="which database?"), UserAnswered(answer="sqlite"))

    assert (asked.pipeline.status, asked.pipeline.question) == (
        "waiting_for_input",
        "which database?",
    )
    assert asked.orchestration.user_messages == (("which database?", ""),)
    assert (answered.pipeline.status, answered.pipeline.question) == ("running", "")
    assert answered.pipeline.answers == ("sqlite",)
    assert answered.orchestration.user_messages == (("which database?", "sqlite"),)


def test_an_answer_nobody_asked_for_is_kept_with_an_empty_question() -> None:
    state = run(START, UserAnswered(answer="use postgres"))

    assert state.orchestration.user_messages == (("", "use postgres"),)
    assert state.pipeline.answers == ("use postgres",)


# -- phases and tasks ----------------------------------------------------------------------------


def test_phase_changes_move_the_phase_and_are_kept_in_order() -> None:
    state = run(
        START,
        PhaseChanged(trigger="plan", from_phase="start", to_phase="planning", reason="new run"),
        PhaseChanged(
            trigger="code", from_phase="planning", to_phase="coding", decided_by="arbiter"
        ),
    )

    assert state.pipeline.phase == "coding"
    history = [
        (e.version, e.from_phase, e.to_phase, e.decided_by) for e in state.pipeline.phase_history
    ]
    assert history == [(2, "start", "planning", "rules"), (3, "planning", "coding", "arbiter")]
    assert state.pipeline.phase_history[0].reason == "new run"


def test_a_task_added_is_new_with_what_the_event_says() -> None:
    state = run(
        START,
        TaskAdded(task_id="t1", title="parser", target_file="todo/parse.py", priority=2),
        TaskAdded(task_id="t2", title="cli", dependencies=("t1",)),
    )

    first, second = state.pipeline.tasks["t1"], state.pipeline.tasks["t2"]
    assert (first.title, first.target_file, first.priority, first.status) == (
        "parser",
        "todo/parse.py",
        2,
        "new",
    )
    assert (first.added_at, first.updated_at, first.attempts, first.errors) == (2, 2, 0, ())
    assert second.dependencies == ("t1",)
    assert list(state.pipeline.tasks) == ["t1", "t2"]


def test_task_updates_set_status_keep_the_highest_attempt_and_collect_errors() -> None:
    state = run(
        START,
        TaskAdded(task_id="t1", title="parser", priority=5),
        TaskUpdated(task_id="t1", status="in_progress", attempt=1),
        TaskUpdated(task_id="t1", status="failed", attempt=2, error="SyntaxError"),
        TaskUpdated(task_id="t1", status="in_progress", attempt=1, priority=1),
        TaskUpdated(task_id="t1", status="failed", attempt=3, error="tests fail"),
    )

    task = state.pipeline.tasks["t1"]
    assert (task.status, task.attempts, task.priority) == ("failed", 3, 1)
    assert task.errors == ("SyntaxError", "tests fail")
    assert task.last_error == "tests fail"
    assert (task.added_at, task.updated_at) == (2, 6)


def test_an_update_of_a_task_never_added_stays_visible() -> None:
    state = run(START, TaskUpdated(task_id="ghost", status="in_progress", attempt=1))

    task = state.pipeline.tasks["ghost"]
    assert (task.title, task.status, task.added_at, task.last_error) == (
        "ghost",
        "in_progress",
        2,
        "",
    )


# -- steps and progress --------------------------------------------------------------------------


def decide(action: str = "work_on_task") -> ArbiterDecided:
    return ArbiterDecided(action=action, parameters={"task_id": "t1"}, reasoning="next")


def test_decisions_count_steps_and_steps_without_progress() -> None:
    state = run(START, decide(), decide(), decide())

    assert (state.pipeline.steps, state.pipeline.steps_since_progress) == (3, 3)


@pytest.mark.parametrize(
    "progress",
    [
        TaskAdded(task_id="t9", title="new"),
        TaskUpdated(task_id="t1", status="completed", attempt=1),
        ToolExecuted(
            call_id="c1",
            tool="write_file",
            ok=True,
            files_changed=(FileChange(path="a.py", after="d1", size=3),),
        ),
    ],
    ids=["task added", "task updated", "file changed"],
)
def test_a_task_or_file_change_resets_steps_without_progress(progress: Event) -> None:
    state = run(START, TaskAdded(task_id="t1", title="x"), decide(), decide(), progress, decide())

    assert (state.pipeline.steps, state.pipeline.steps_since_progress) == (3, 1)


def test_a_tool_call_that_changes_no_file_is_not_progress() -> None:
    state = run(
        START,
        decide(),
        ToolRequested(call_id="c1", tool="read_file", arguments={"path": "a.py"}),
        ToolExecuted(call_id="c1", tool="read_file", ok=True, result="..."),
        decide(),
    )

    assert state.pipeline.steps_since_progress == 2


# -- tools and files -----------------------------------------------------------------------------


def test_a_requested_tool_is_pending_until_it_is_executed() -> None:
    requested = ToolRequested(call_id="c1", tool="write_file", arguments={"path": "a.py"})
    pending = run(START, requested)
    done = run(
        START, requested, ToolExecuted(call_id="c1", tool="write_file", ok=False, error="denied")
    )

    tool = pending.pipeline.pending_tools["c1"]
    assert (tool.tool, tool.arguments, tool.version) == ("write_file", {"path": "a.py"}, 2)
    assert "c1" not in done.pipeline.pending_tools and len(done.pipeline.pending_tools) == 0


def test_file_changes_create_update_and_delete_files() -> None:
    def executed(call_id: str, *changes: FileChange) -> ToolExecuted:
        return ToolExecuted(call_id=call_id, tool="write_file", ok=True, files_changed=changes)

    state = run(
        START,
        executed(
            "c1",
            FileChange(path="a.py", after="d1", size=10),
            FileChange(path="b.py", after="d2", size=20),
        ),
        executed("c2", FileChange(path="a.py", before="d1", after="d3", size=11)),
        executed("c3", FileChange(path="b.py", before="d2", after=None)),
    )

    files = state.pipeline.files
    assert list(files) == ["a.py"]
    assert (files["a.py"].digest, files["a.py"].size, files["a.py"].changed_at) == ("d3", 11, 3)


def test_a_file_deleted_and_written_again_comes_last_as_in_a_dict() -> None:
    def write(path: str, digest: str | None) -> ToolExecuted:
        change = FileChange(path=path, after=digest, size=1)
        return ToolExecuted(call_id=f"c-{path}-{digest}", ok=True, files_changed=(change,))

    state = run(START, write("a", "1"), write("b", "2"), write("a", None), write("a", "3"))

    assert list(state.pipeline.files) == ["b", "a"]


# -- models --------------------------------------------------------------------------------------


def test_a_conversation_is_rebuilt_from_the_messages_each_request_adds() -> None:
    system, ask, answer, again = user("system"), user("write it"), user("done"), user("and tests")
    state = run(
        START,
        request("m1", system, ask),
        respond("m1"),
        request("m2", answer, again, offset=2),
    )

    assert state.orchestration.conversations["coder:t1"] == (system, ask, answer, again)


def test_a_request_with_a_smaller_offset_replaces_the_conversation_tail() -> None:
    one, two, three, edited = user("1"), user("2"), user("3"), user("2'")
    state = run(
        START, request("m1", one, two, three), respond("m1"), request("m2", edited, offset=1)
    )

    assert state.orchestration.conversations["coder:t1"] == (one, edited)


def test_an_open_call_records_what_its_response_is_attributed_to() -> None:
    warm = request("m1", user("x"), options={"temperature": 0.7})
    default = request("m2", user("y"), options={}, conversation="other")
    state = run(START, warm, default)

    calls = state.orchestration.open_calls
    assert (calls["m1"].role, calls["m1"].model, calls["m1"].temperature, calls["m1"].version) == (
        "coder",
        "qwen",
        0.7,
        2,
    )
    assert calls["m2"].temperature is None


def test_usage_is_summed_per_model_and_per_role() -> None:
    state = run(
        START,
        request("m1", user("a"), role="coder", model="qwen"),
        respond("m1", prompt=100, completion=20, ms=1000.0),
        request("m2", user("b"), role="planner", model="qwen", digest=DIGEST_B),
        respond("m2", prompt=50, completion=5, ms=500.0),
        request("m3", user("c"), role="coder", model="llama"),
        respond("m3", prompt=7, completion=3, ms=10.0),
    )

    orchestration = state.orchestration
    qwen = orchestration.usage_by_model["qwen"]
    assert (qwen.calls, qwen.prompt_tokens, qwen.completion_tokens, qwen.duration_ms) == (
        2,
        150,
        25,
        1500.0,
    )
    coder = orchestration.usage_by_role["coder"]
    assert (coder.calls, coder.tokens) == (2, 130)
    assert orchestration.total_tokens == 185
    assert len(orchestration.open_calls) == 0


def test_a_failed_attempt_counts_as_a_failure_and_the_call_stays_open() -> None:
    state = run(
        START,
        request("m1", user("a")),
        ModelFailed(call_id="m1", kind="timeout", attempt=1),
        ModelFailed(call_id="m1", kind="timeout", attempt=2),
    )

    usage = state.orchestration.usage_by_model["qwen"]
    assert (usage.calls, usage.failures) == (0, 2)
    assert state.orchestration.usage_by_role["coder"].failures == 2
    assert "m1" in state.orchestration.open_calls


def test_a_retry_that_succeeds_counts_the_failure_and_the_call() -> None:
    state = run(
        START, request("m1", user("a")), ModelFailed(call_id="m1", kind="connection"), respond("m1")
    )

    usage = state.orchestration.usage_by_model["qwen"]
    assert (usage.calls, usage.failures, usage.tokens) == (1, 1, 15)


def test_answers_to_calls_nobody_requested_are_ignored() -> None:
    state = run(START, respond("nobody"), ModelFailed(call_id="nobody", kind="timeout"))

    assert state.orchestration == OrchestrationState()


def test_a_request_digest_keeps_the_first_answer_to_it() -> None:
    state = run(
        START,
        request("m1", user("a"), digest=DIGEST_A),
        respond("m1"),
        request("m2", user("a"), digest=DIGEST_A, conversation="again"),
        respond("m2"),
        request("m3", user("b"), digest=DIGEST_B),
        ModelFailed(call_id="m3", kind="timeout"),
    )

    answered = state.orchestration.answered
    assert answered.get(DIGEST_A) == 3, "the version of m1's answer"
    assert answered.get(DIGEST_B) is None


# -- decisions and consultations ---------------------------------------------------------------


def test_decisions_are_kept_with_their_fallbacks() -> None:
    fallback = ArbiterDecided(
        action="change_phase",
        parameters={"to": "qa"},
        decided_by="rules",
        fallback_used=True,
        fallback_reason="the arbiter named an unknown phase",
    )
    state = run(START, decide(), fallback)

    decisions = list(state.orchestration.decisions)
    assert [(d.version, d.action, d.fallback_used) for d in decisions] == [
        (2, "work_on_task", False),
        (3, "change_phase", True),
    ]
    assert decisions[1].fallback_reason == "the arbiter named an unknown phase"
    assert decisions[1].parameters == {"to": "qa"}


def test_consultations_are_kept_in_order() -> None:
    state = run(
        START,
        SpecialistConsulted(
            specialist="reviewer", task_id="t1", outcome="approved", summary="fine"
        ),
        SpecialistConsulted(specialist="debugger", outcome="advice"),
    )

    consulted = [(c.version, c.specialist, c.outcome) for c in state.orchestration.consultations]
    assert consulted == [(2, "reviewer", "approved"), (3, "debugger", "advice")]


# -- purity and sharing --------------------------------------------------------------------------


def test_an_event_a_projection_does_not_read_returns_that_projection_itself() -> None:
    pipeline = run(START, TaskAdded(task_id="t1", title="x")).pipeline
    orchestration = run(START, request("m1", user("a"))).orchestration

    assert apply_pipeline(pipeline, request("m2", user("b")), 9) is pipeline
    assert (
        apply_orchestration(orchestration, TaskAdded(task_id="t2", title="y"), 9) is orchestration
    )


def test_apply_never_changes_the_state_it_is_given() -> None:
    store = MemoryEventStore()
    recorded = record(
        store,
        "r1",
        START,
        TaskAdded(task_id="t1", title="x"),
        request("m1", user("a")),
        ToolRequested(call_id="c1", tool="write_file"),
    )
    before = fold(recorded)
    snapshot = fold(recorded)
    later = record(
        store,
        "r1",
        respond("m1"),
        ToolExecuted(
            call_id="c1", ok=True, files_changed=(FileChange(path="a", after="d", size=1),)
        ),
        TaskUpdated(task_id="t1", status="completed", attempt=1),
        decide(),
        PhaseChanged(trigger="qa", from_phase="start", to_phase="qa"),
        RunRewound(to_version=2),
    )

    after_each = before
    for event in later:
        after_each = apply(after_each, event)
    after_all = fold(later, before)

    assert before == snapshot
    assert after_all == after_each
    assert "c1" in before.pipeline.pending_tools and len(before.pipeline.files) == 0
    assert before.pipeline.tasks["t1"].status == "new"


def test_two_states_made_from_one_state_do_not_see_each_other() -> None:
    store = MemoryEventStore()
    common = fold(record(store, "r1", START, TaskAdded(task_id="t1", title="x")))
    left = record(store, "r1", TaskAdded(task_id="left", title="l"), decide())
    right_store = MemoryEventStore()
    record(right_store, "r1", START, TaskAdded(task_id="t1", title="x"))
    right = record(right_store, "r1", TaskAdded(task_id="right", title="r"))

    one = fold(left, common)
    other = fold(right, common)
    one_again = apply(apply(common, left[0]), left[1])

    assert set(one.pipeline.tasks) == {"t1", "left"}
    assert set(other.pipeline.tasks) == {"t1", "right"}
    assert set(common.pipeline.tasks) == {"t1"}
    assert one_again == one
    assert len(one.orchestration.decisions) == 1 and len(other.orchestration.decisions) == 0


# -- rewinds and forks ---------------------------------------------------------------------------


def test_a_rewind_returns_to_the_state_at_its_target_version_and_goes_on_from_there() -> None:
    store = MemoryEventStore()
    record(
        store,
        "r1",
        START,
        TaskAdded(task_id="t1", title="keep"),
        TaskAdded(task_id="t2", title="undone"),
        request("m1", user("a")),
        respond("m1"),
        RunRewound(to_version=2, reason="bad plan"),
        TaskAdded(task_id="t3", title="after"),
    )

    at_rewind = project(store, "r1", upto=6)
    latest = project(store, "r1")
    at_two = project(store, "r1", upto=2)

    assert (at_rewind.pipeline, at_rewind.orchestration) == (at_two.pipeline, at_two.orchestration)
    assert at_rewind.version == 6
    assert at_rewind == fold(store.read("r1", upto=6)), "nothing is forgotten"
    assert list(latest.pipeline.tasks) == ["t1", "t3"]
    assert latest.pipeline.tasks["t3"].added_at == 7
    assert latest.orchestration.usage_by_model == {}


def test_a_rewind_to_a_version_after_an_earlier_rewind_keeps_that_rewind() -> None:
    state = run(
        START,
        TaskAdded(task_id="t1", title="a"),
        RunRewound(to_version=1),
        TaskAdded(task_id="t2", title="b"),
        TaskAdded(task_id="t3", title="c"),
        RunRewound(to_version=4),
    )

    assert list(state.pipeline.tasks) == ["t2"]


def test_a_fork_starts_from_its_parent_at_the_fork_point_and_leaves_the_parent_alone() -> None:
    store = MemoryEventStore()
    record(
        store,
        "parent",
        START,
        TaskAdded(task_id="t1", title="shared"),
        request("m1", user("a")),
        respond("m1", prompt=10, completion=1),
        TaskAdded(task_id="t2", title="parent only"),
    )
    parent_before = project(store, "parent")
    record(
        store,
        "fork",
        RunForked(parent_run="parent", at_version=4, workspace="/work/fork"),
        TaskAdded(task_id="t3", title="fork only"),
        request("m2", user("b"), digest=DIGEST_B),
        respond("m2", prompt=5, completion=1),
    )

    fork = project(store, "fork")
    parent_at = project(store, "parent", upto=4)

    assert list(fork.pipeline.tasks) == ["t1", "t3"]
    assert fork.pipeline.tasks["t3"].added_at == 2  # the fork's own versions
    assert (fork.pipeline.parent_run, fork.pipeline.forked_at) == ("parent", 4)
    assert (fork.pipeline.run_id, fork.pipeline.workspace, fork.pipeline.goal) == (
        "fork",
        "/work/fork",
        "a todo app",
    )
    assert fork.orchestration.usage_by_model["qwen"].calls == 2
    assert fork.base == parent_at
    assert project(store, "parent") == parent_before


def test_a_rewind_inside_a_fork_can_go_back_to_the_fork_point() -> None:
    store = MemoryEventStore()
    record(store, "parent", START, TaskAdded(task_id="t1", title="shared"))
    record(
        store,
        "fork",
        RunForked(parent_run="parent", at_version=2),
        TaskAdded(task_id="t2", title="fork only"),
        RunRewound(to_version=1),
    )

    fork = project(store, "fork")
    just_forked = project(store, "fork", upto=1)

    assert list(fork.pipeline.tasks) == ["t1"]
    assert (fork.pipeline, fork.orchestration) == (just_forked.pipeline, just_forked.orchestration)
    assert fork.pipeline.workspace == "/work/todo"


@pytest.mark.parametrize("cycle", [["x"], ["a", "b"], ["a", "b", "c"]])
def test_a_run_that_descends_from_itself_is_a_clear_error_not_a_recursion(
    cycle: list[str],
) -> None:
    """A log no autonomy writes (a run forked from itself, two runs forked from each
    other) ended every fold of them, and every walk of their history, in a
    ``RecursionError``: ``runs`` and ``verify`` of the whole log with a traceback."""
    from engine.runs.diff import effective_events
    from engine.runs.workspace import files_at
    from events.errors import StoreCorrupted
    from projections.fold import fork_lineage

    store = MemoryEventStore()
    for run_id, parent in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        record(store, run_id, RunForked(parent_run=parent, at_version=1))
    for walk in (
        lambda: project(store, cycle[0]),
        lambda: fork_lineage(store, cycle[0]),
        lambda: effective_events(store, cycle[0]),
        lambda: files_at(store, cycle[0], 1),
    ):
        with pytest.raises(StoreCorrupted, match="which is itself a fork of it"):
            walk()


def test_a_fork_of_a_fork_a_thousand_and_more_deep_folds_and_walks() -> None:
    """Forks were followed by recursion, a level a fork: deeper than Python's
    recursion limit, a ``RecursionError``. The lineage is walked in a loop."""
    from engine.runs.diff import effective_events
    from engine.runs.workspace import files_at
    from projections.fold import fork_lineage

    store = MemoryEventStore()
    record(store, "r0", START, TaskAdded(task_id="t1", title="shared"))
    depth = 1_200
    for n in range(1, depth + 1):
        record(store, f"r{n}", RunForked(parent_run=f"r{n - 1}", at_version=2))

    state = project(store, f"r{depth}")

    assert list(state.pipeline.tasks) == ["t1"]
    assert (state.pipeline.parent_run, state.pipeline.forked_at) == (f"r{depth - 1}", 2)
    assert [run for run, _ in fork_lineage(store, f"r{depth}")][:2] == ["r0", "r1"]
    assert [e.data for e in effective_events(store, f"r{depth}")][1] == TaskAdded(
        task_id="t1", title="shared"
    )
    assert files_at(store, f"r{depth}", 1) == {}


def test_a_log_of_forks_of_forks_is_read_once_a_run_by_the_commands_of_every_run() -> None:
    """Each run of a log of forks of forks was folded with its whole lineage again,
    and each ancestor's first event and chain read again: a log file of 459 KB, 1,000
    forks deep, took ``verify`` 68 s and 1.6 GB, and a replay of its last run more
    than 3 GB. The parent of a fork at the fork point is folded once, for as long as
    ``shared_projections`` lasts (verify, the run list, a replay, checkpoints)."""
    from engine.runs.replay import replay
    from engine.runs.verification import verify_log
    from projections.summaries import run_summaries

    store = MemoryEventStore()
    record(store, "r0", RunStarted(goal="g", workspace="/w"))
    depth = 300
    for n in range(1, depth + 1):
        record(store, f"r{n}", RunForked(parent_run=f"r{n - 1}", at_version=1))
    reads: list[str] = []
    for name in ("read", "read_payloads", "read_raw", "read_brief"):
        method = getattr(store, name)

        def counted(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            reads.append(_name)
            return _method(*args, **kwargs)

        setattr(store, name, counted)

    for command in (
        lambda: verify_log(store),
        lambda: run_summaries(store),
        lambda: replay(store, f"r{depth}", tools="recorded"),
    ):
        reads.clear()
        command()
        assert len(reads) < 12 * depth, (command, len(reads))  # (depth**2 / 2 before)
    assert verify_log(store).ok
    assert replay(store, f"r{depth}", tools="recorded").identical
    # a command that checks every run's chain before it acts (checkpoint) walks each once
    from engine.agent.runlog import refuse_tampered

    verify, walked = store.verify, []
    store.verify = lambda run_id, upto=None: walked.append(run_id) or verify(run_id, upto=upto)  # type: ignore[method-assign]
    verified: dict[Any, Any] = {}
    for n in range(depth + 1):
        refuse_tampered(store, f"r{n}", None, "nothing was done", verified)
    assert len(walked) < 3 * depth, len(walked)


def test_a_fork_event_in_the_middle_of_a_run_makes_the_state_so_far_its_base() -> None:
    # Not what the engine writes, but the fold must still answer it the same way
    # from the log and from recorded events.
    state = run(
        START,
        TaskAdded(task_id="t1", title="x"),
        RunForked(parent_run="elsewhere", at_version=7),
        TaskAdded(task_id="t2", title="y"),
        RunRewound(to_version=3),
    )

    assert state.base is not None and state.base.version == 2
    assert list(state.pipeline.tasks) == ["t1"]
    assert [e.version for e in state.events()] == [3, 4, 5]
    assert state.pipeline.forked_at == 7


def test_a_rewind_refolds_an_upcast_event_as_it_was_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    # A row stored at an older schema version is refolded as it was upcast, both
    # from the log and from memory.
    upcasters = UpcasterRegistry()
    current = TaskAdded.schema_version

    @upcasters.register("task.added", current)
    def shout(raw: dict[str, Any]) -> dict[str, Any]:
        return {**raw, "title": raw["title"].upper()}

    store = MemoryEventStore(codec=Codec(upcasters))
    record(store, "r1", START, TaskAdded(task_id="t1", title="quiet"))
    monkeypatch.setattr(TaskAdded, "schema_version", current + 1)
    record(store, "r1", TaskAdded(task_id="t2", title="late"), RunRewound(to_version=3))

    state = project(store, "r1")

    assert {t.task_id: t.title for t in state.pipeline.tasks.values()} == {
        "t1": "QUIET",
        "t2": "late",
    }
    assert state == fold(store.read("r1"))


def test_projecting_a_run_without_events_is_an_error_and_version_zero_is_empty() -> None:
    store = MemoryEventStore()
    record(store, "r1", START)

    with pytest.raises(RunNotFound):
        project(store, "nobody")
    assert project(store, "r1", upto=0) == RunState(run_id="r1")


def test_folding_nothing_returns_the_state_given() -> None:
    state = run(START)

    assert fold([], state) is state
    assert fold([]) is EMPTY


def test_states_from_the_log_and_from_recorded_events_compare_equal() -> None:
    store = MemoryEventStore()
    recorded = record(store, "r1", START, TaskAdded(task_id="t1", title="x"))

    projected, folded = project(store, "r1"), fold(recorded)

    assert projected == folded
    assert (projected != folded) is False
    assert projected != fold(recorded[:1])
    assert projected != "a state"


# -- persistent collections ----------------------------------------------------------------------

KEYS = st.sampled_from("abcdefghijkl")
Op = tuple[str, int, str, int]
OPS = st.lists(
    st.tuples(
        st.sampled_from(("set", "set", "delete")),
        st.integers(0, 10**6),  # which older version, when the change branches
        KEYS,
        st.integers(),
    ),
    min_size=20,
    max_size=80,
)


@given(OPS, st.integers(0, 5))
def test_every_version_of_a_map_keeps_its_items_and_dict_order(
    ops: list[Op], branches: int
) -> None:
    # ``branches`` of every 10 changes start from an older version, the others
    # extend the newest (long chains, whose overlays merge into the shared base)
    versions: list[tuple[PersistentMap[str, int], dict[str, int]]] = [(PersistentMap(), {})]
    for index, (kind, pick, key, value) in enumerate(ops):
        branch = index % 10 < branches
        current, model = versions[pick % len(versions) if branch else -1]
        model = dict(model)
        if kind == "set":
            current = current.set(key, value)
            model[key] = value
        else:
            current = current.delete(key)
            model.pop(key, None)
        versions.append((current, model))
    for version, model in versions:
        assert list(version.items()) == list(model.items())
        assert version == model and model == version
        assert len(version) == len(model)
        assert all(version[k] == v and k in version for k, v in model.items())
        assert all(version.get(k, -1) == model.get(k, -1) for k in "abcdefghijklmnop")


class Box:
    """A value compared by identity, as the projected states' values are by derived_each."""

    def __init__(self, value: int) -> None:
        self.value = value


def doubled(box: Box) -> int:
    return box.value * 2


@given(OPS, st.integers(0, 5), st.randoms(use_true_random=False))
def test_what_is_derived_from_each_value_is_that_of_the_version_asked_whatever_the_order(
    ops: list[Op], branches: int, rnd: Any
) -> None:
    # versions branch from older ones, so versions sharing a memo hold different
    # values under one key; each is asked in an order of its own
    versions: list[PersistentMap[str, Box]] = [PersistentMap()]
    for index, (kind, pick, key, value) in enumerate(ops):
        current = versions[pick % len(versions) if index % 10 < branches else -1]
        current = current.set(key, Box(value)) if kind == "set" else current.delete(key)
        versions.append(current)
        if rnd.random() < 0.3:  # some asked while the lineage grows
            asked = rnd.choice(versions)
            assert asked.derived_each(doubled) == {k: doubled(v) for k, v in asked.items()}
    rnd.shuffle(versions)
    for version in versions:
        derived = version.derived_each(doubled)
        assert list(derived.items()) == [(k, doubled(v)) for k, v in version.items()]


def test_a_value_derived_from_each_item_is_worked_out_once_per_item_across_versions() -> None:
    seen: list[int] = []

    def count(box: Box) -> int:
        seen.append(box.value)
        return box.value

    boxes = {str(i): Box(i) for i in range(20)}
    version = PersistentMap(boxes)
    assert version.derived_each(count) == {k: b.value for k, b in boxes.items()}
    for i in range(15):  # past the merge of the overlay into a new base
        version = version.set(str(i), Box(100 + i))
        version.derived_each(count)
    version = version.delete("19")
    assert list(version.derived_each(count).values()) == [100 + i for i in range(15)] + [
        15,
        16,
        17,
        18,
    ]
    assert sorted(seen) == [*range(20), *range(100, 115)], "each value once"
    derived = version.derived_each(count)
    derived.clear()  # the caller's own dict
    assert len(version.derived_each(count)) == 19
    # a copy is the items alone, what was worked out for them stays behind
    assert pickle.loads(pickle.dumps(version))._lineage is None
    decisions = Appended([1, 2, 3])
    assert decisions.derived_each(str) == ["1", "2", "3"] and decisions._lineage
    assert decisions.append(4) == Appended([1, 2, 3, 4])  # on the very list decisions reads
    copy = pickle.loads(pickle.dumps(decisions))
    assert copy == decisions and copy._lineage is None and copy._items == [1, 2, 3]


def test_an_empty_default_never_carries_a_memo_to_the_versions_made_from_it() -> None:
    empty_map: PersistentMap[str, Box] = PersistentMap()
    empty_list: Appended[Box] = Appended()
    assert empty_map.derived_each(doubled) == {} and empty_list.derived_each(doubled) == []
    one, other = empty_map.set("a", Box(1)), empty_map.set("a", Box(2))
    first, second = empty_list.append(Box(1)), empty_list.append(Box(2))
    assert one.derived_each(doubled) == {"a": 2} and first.derived_each(doubled) == [2]
    assert empty_map._lineage is None and empty_list._lineage is None
    assert other._lineage is None and second._lineage is None
    assert other.derived_each(doubled) == {"a": 4} and second.derived_each(doubled) == [4]


APPENDS = st.lists(st.tuples(st.integers(0, 10**6), st.booleans(), st.integers()), max_size=40)


@given(APPENDS, st.randoms(use_true_random=False))
def test_what_is_derived_from_each_item_of_a_sequence_is_that_of_the_version_asked(
    appends: list[tuple[int, bool, int]], rnd: Any
) -> None:
    # each version is asked as it is made, so that its memo reaches the versions made
    # from it: siblings, with different items at one index, share it
    versions: list[Appended[Box]] = [Appended()]
    for pick, branch, value in appends:
        versions.append(versions[pick % len(versions) if branch else -1].append(Box(value)))
        assert versions[-1].derived_each(doubled, -3) == [
            doubled(b) for b in list(versions[-1])[-3:]
        ]
        asked = rnd.choice(versions)
        start = rnd.randint(-5, 5)
        assert asked.derived_each(doubled, start) == [doubled(b) for b in list(asked)[start:]]
    rnd.shuffle(versions)
    for version in versions:
        start = rnd.randint(-5, 5)
        assert version.derived_each(doubled, start) == [doubled(b) for b in list(version)[start:]]
        assert version.derived_each(doubled) == [doubled(b) for b in version]


SLICES = st.builds(
    slice,
    st.none() | st.integers(-15, 15),
    st.none() | st.integers(-15, 15),
    st.sampled_from((None, 1, 2, -1, -3)),
)


@given(st.integers(0, 12), st.integers(0, 5), SLICES)
def test_a_slice_of_a_sequence_is_that_of_its_list(length: int, more: int, part: slice) -> None:
    version = Appended(range(length))
    grown = version
    for i in range(more):  # newer versions append to the very list this one reads
        grown = grown.append(100 + i)
    assert version[part] == list(range(length))[part]
    assert grown[part] == [*range(length), *range(100, 100 + more)][part]


def test_a_key_deleted_from_the_shared_base_and_set_again_moves_to_the_end() -> None:
    merged = PersistentMap[str, int]()
    for i in range(12):  # enough changes to merge the overlay into the base
        merged = merged.set(str(i), i)

    again = merged.delete("0").set("5", 50).set("0", 0)

    assert list(again) == [str(i) for i in range(1, 12)] + ["0"]
    assert again["5"] == 50 and list(merged) == [str(i) for i in range(12)]


def test_a_map_equals_any_mapping_with_the_same_items() -> None:
    grown = PersistentMap[str, int]()
    for i in range(40):
        grown = grown.set(str(i), i)
    shrunk = grown
    for i in range(20):
        shrunk = shrunk.delete(str(i))

    assert grown == {str(i): i for i in range(40)}
    assert shrunk == PersistentMap({str(i): i for i in range(20, 40)})
    assert shrunk != grown
    assert PersistentMap({"a": 1}) != {"a": 2}
    assert PersistentMap({"a": 1}) != ["a"]
    assert isinstance(grown, Mapping)


def test_setting_the_same_value_or_deleting_a_missing_key_is_the_same_map() -> None:
    value = object()
    one = PersistentMap({"a": value})

    assert one.set("a", value) is one
    assert one.delete("missing") is one
    assert one.delete("a").delete("a") == {}


def test_a_map_reads_like_a_dict() -> None:
    base = PersistentMap({"a": 1, "b": 2}).set("c", 3).delete("a")

    assert base["b"] == 2 and base.get("a") is None and base.get("a", 0) == 0
    assert "a" not in base and "c" in base
    with pytest.raises(KeyError):
        base["a"]
    assert list(base.keys()) == ["b", "c"] and list(base.values()) == [2, 3]
    assert base.to_dict() == {"b": 2, "c": 3}
    assert base.update({"d": 4}) == {"b": 2, "c": 3, "d": 4}
    assert repr(base) == "PersistentMap({'b': 2, 'c': 3})"
    assert pickle.loads(pickle.dumps(base)) == base
    with pytest.raises(TypeError):
        hash(base)


def test_an_old_sequence_never_sees_what_a_newer_one_appended() -> None:
    empty: Appended[int] = Appended()
    one = empty.append(1)
    two = one.append(2)
    branch = one.append(20)
    three = two.append(3)

    assert list(empty) == [] and list(one) == [1]
    assert list(two) == [1, 2] and list(branch) == [1, 20] and list(three) == [1, 2, 3]
    assert two[-1] == 2 and three[0:2] == [1, 2]
    with pytest.raises(IndexError):
        two[2]
    assert three == Appended([1, 2, 3]) and three != two
    assert Appended.adopt([1, 2]) == two and two.to_list() == [1, 2]
    seen = []
    for item in three:  # appending to the version being iterated, in place
        seen.append(item)
        three.append(item * 10)
    assert seen == [1, 2, 3]
    assert repr(branch) == "Appended([1, 20])"


def test_editors_write_new_versions_and_freeze_to_them() -> None:
    original = PersistentMap({"a": 1})
    editor = MapEditor(original)
    editor["b"] = 2
    del editor["a"]
    assert editor.pop("missing", None) is None
    with pytest.raises(KeyError):
        editor.pop("missing")
    with pytest.raises(KeyError):
        del editor["missing"]
    assert editor.pop("b") == 2
    editor["c"] = 3

    sequence = AppendedEditor(Appended([1]))
    sequence.append(2)

    assert freeze_map(editor) == {"c": 3} and original == {"a": 1}
    assert len(editor) == 1 and list(editor) == ["c"] and editor.get("c") == 3 and "c" in editor
    assert list(freeze_sequence(sequence)) == [1, 2]
    assert freeze_map({"x": 1}) == {"x": 1} and list(freeze_sequence([1])) == [1]


def test_a_state_built_by_hand_with_plain_dicts_folds_like_any_other() -> None:
    task = TaskState(task_id="t1", title="x")
    by_hand = PipelineState(tasks={"t1": task}, phase_history=())  # type: ignore[arg-type]
    event = TaskUpdated(task_id="t1", status="completed", attempt=1)
    store = MemoryEventStore()
    recorded = record(store, "r1", event)

    one = apply_pipeline(by_hand, event, 1)
    many = fold(recorded, RunState(pipeline=by_hand)).pipeline

    assert (
        one.tasks
        == many.tasks
        == {"t1": replace(task, status="completed", attempts=1, updated_at=1)}
    )
    assert isinstance(one.tasks, PersistentMap) and isinstance(many.tasks, PersistentMap)


def test_model_and_tool_calls_fold_into_a_state_built_by_hand_with_plain_dicts() -> None:
    # apply writes these events straight to the persistent maps, not through editors
    call = run(START, request("c1", user("hi"))).orchestration.open_calls["c1"]
    orchestration = OrchestrationState(open_calls={"c1": call})  # type: ignore[arg-type]
    pending = run(START, ToolRequested(call_id="x1", tool="run_tests")).pipeline.pending_tools
    pipeline = PipelineState(pending_tools=dict(pending), files={})  # type: ignore[arg-type]
    answer, again = respond("c1"), request("c2", user("more"))
    changed = FileChange(path="a.py", before=None, after=DIGEST_A, size=3)
    executed = ToolExecuted(call_id="x1", tool="run_tests", ok=True, files_changed=(changed,))
    store = MemoryEventStore()
    recorded = record(store, "r1", answer, again, executed)

    one = apply_orchestration(apply_orchestration(orchestration, answer, 1), again, 2)
    ran = apply_pipeline(pipeline, executed, 3)
    many = fold(recorded, RunState(pipeline=pipeline, orchestration=orchestration))

    assert one == many.orchestration and replace(ran, run_id="r1") == many.pipeline
    assert one.usage_by_role["coder"].calls == 1 and list(one.open_calls) == ["c2"]
    assert ran.pending_tools == {} and ran.files["a.py"].digest == DIGEST_A


def test_state_defaults_are_empty_collections() -> None:
    pipeline = PipelineState()

    assert pipeline.tasks == {} and pipeline.files == {} and list(pipeline.phase_history) == []
    assert OrchestrationState().answered == {}


def test_one_event_changes_only_the_fields_its_step_touches() -> None:
    state = run(START, TaskAdded(task_id="t1", title="a"), request("c1", user("hi")))
    pipeline, orchestration = state.pipeline, state.orchestration
    # a resume of a running run changes nothing: the very same state comes back
    assert apply_pipeline(pipeline, RunResumed(), 4) is pipeline
    answered = apply_orchestration(orchestration, respond("c1"), 4)
    changed = {"open_calls", "usage_by_model", "usage_by_role", "answered"}
    for name in OrchestrationState.__struct_fields__:
        same = getattr(answered, name) is getattr(orchestration, name)
        assert same != (name in changed), name
    updated = apply_pipeline(pipeline, TaskUpdated(task_id="t1", status="in_progress"), 4)
    assert updated.tasks["t1"].status == "in_progress" and updated.files is pipeline.files
    assert pipeline.tasks["t1"].status == "new"  # the state given is never changed


def test_a_map_version_is_merged_once_however_often_it_is_read_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from projections import sequence

    merged: list[int] = []
    real = sequence._merge

    def counted(base: dict[str, int], overlay: dict[str, int]) -> dict[str, int]:
        merged.append(len(overlay))
        return real(base, overlay)

    monkeypatch.setattr(sequence, "_merge", counted)
    base = PersistentMap({f"k{i}": i for i in range(100)})
    version = base.set("k1", -1).delete("k2").set("new", 7)
    for _ in range(3):
        assert list(version) == [f"k{i}" for i in range(100) if i != 2] + ["new"]
        assert list(version.values())[1] == -1 and dict(version.items())["new"] == 7
    copy = version.to_dict()
    copy["k1"] = 1  # a copy of its own: the version is unchanged
    assert version["k1"] == -1 and len(merged) == 1
    assert base["k1"] == 1 and "k2" in base and "new" not in base


def test_a_value_derived_from_a_map_version_is_worked_out_once_per_version() -> None:
    from engine.machines.tasks import count_facts, ready_tasks
    from projections.pipeline import TaskState

    calls: list[int] = []

    def total(items: PersistentMap[str, int]) -> int:
        calls.append(len(items))
        return sum(items.values())

    version = PersistentMap({"a": 1, "b": 2})
    assert version.derived(total) == 3 and version.derived(total) == 3
    newer = version.set("c", 4)
    assert newer.derived(total) == 7 and version.derived(total) == 3
    assert calls == [2, 3], "once per version, and the old version keeps its own"

    tasks = PersistentMap({"t1": TaskState(task_id="t1", title="a")})
    assert [t.task_id for t in ready_tasks(tasks)] == ["t1"]
    ready_tasks(tasks).clear()  # the caller's own list: the derived value is unchanged
    count_facts(tasks)["ready"] = 0
    assert [t.task_id for t in ready_tasks(tasks)] == ["t1"] and count_facts(tasks)["ready"] == 1
    done = tasks.set("t1", TaskState(task_id="t1", title="a", status="completed"))
    assert ready_tasks(done) == [] and count_facts(done)["open"] == 0
