"""Running a goal to the end, step by step, and resuming a run from its log.

Each step is: decide (from projected state only) -> record the decision -> move
the phase machine if the work needs another phase -> do the work, which appends
its own events. The loop ends when the run's projected status is no longer
``running``; every way out is bounded (steps, no progress, attempts, turns).

Who decides depends on ``settings.mode``: in ``orchestrated`` mode (the default)
``engine.agent.arbiter.decide`` asks the arbiter model and falls back to the rules with
the reason recorded; in ``rules`` mode (deprecated) ``engine.agent.coordinator.decide``
alone decides. Work is done by a specialist (``engine.agent.specialists``); in
orchestrated mode each consultation is recorded as ``specialist.consulted``. An
arbiter's ``request_user_input`` records ``user.asked``, which sets the run
``waiting_for_input`` and ends ``run``; ``autonomy answer`` records the answer and
``resume_run`` continues.

``Engine`` holds only collaborators (log, model client, tools, settings): the one
fact it works from is ``log.state``, the projection of the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec

from engine import __version__, stops
from engine.agent import arbiter
from engine.agent.conversation import ToolRunner, run_conversation
from engine.agent.coordinator import Step, decide, model_trouble
from engine.agent.progress import watching
from engine.agent.prompts import digest, opening
from engine.agent.runlog import RunLog, check_run_id, refuse_tampered
from engine.agent.specialists import specialist_for
from engine.config import Settings
from engine.errors import ConfigError, IllegalTransition, ToolError
from engine.keys import key_file
from engine.machines.phases import TERMINAL, PhaseFacts, PhaseMachine, phase_changed_to
from engine.machines.tasks import check_status_change
from engine.model.client import ModelClient
from engine.model.credentials import load_server_keys, server_keys_file
from engine.model.discovery import learn_contexts
from engine.model.preflight import preflight
from engine.model.recording import RecordingModel
from engine.model.roles import ROLE_NAMES
from engine.model.stored import full_arguments
from engine.storage import is_postgres_url
from engine.terminal import clipped, one_line
from engine.tools import Sandbox, ToolRegistry, default_registry, execute
from engine.tools.commands import changes_of_a_cut_command
from engine.tools.confine import Confinement, choose, credentials
from engine.tools.files import remove_partials, written_by
from engine.tools.sandbox import clear_set_id, not_a_project, read_only, workspace_problem
from engine.tools.snapshot import WorkspaceDigests
from engine.tools.workflow import SET_TASK_PRIORITY
from events.errors import AutonomyError, EventStoreError, LeaseHeld, StoreUnavailable
from events.lease import FileLeases, describe_owner
from events.schema import (
    ArbiterDecided,
    Event,
    FileChange,
    ModelFailed,
    PhaseChanged,
    RunFinished,
    RunResumed,
    RunStarted,
    SpecialistConsulted,
    TaskUpdated,
    ToolExecuted,
    ToolRequested,
    UserAsked,
)
from events.store import EventStore, RecordedEvent
from projections.fold import RunState
from projections.pipeline import PendingTool, PipelineState

Progress = Callable[[str], None]

WORK = ("plan", "reason", "code", "debug", "qa")
"""The kinds of work a specialist does (``engine.agent.specialists``)."""

_FILE_TOOLS = ("create_file", "modify_file", "delete_file")

_UNKNOWN = "interrupted by a crash; whether it finished is unknown, so it counts as not done"

_INTERRUPTED = (
    "interrupted: the engine stopped while {tool} was running; it was ended with the "
    "engine and is not run again, so its result is unknown. Run it again if you need it"
)


class ResumeRefused(AutonomyError):
    """This run cannot be resumed."""


def new_run_id(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return f"run-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


class Engine:
    """Drives one run until it is no longer running."""

    def __init__(
        self,
        log: RunLog,
        *,
        settings: Settings,
        client: ModelClient,
        workspace: Path,
        tools: ToolRegistry | None = None,
        progress: Progress | None = None,
        confinement: Confinement | None = None,
        run_tool: ToolRunner = execute,
    ) -> None:
        self.log = log
        self.settings = settings
        self.workspace = workspace
        self.tools = (
            tools if tools is not None else ToolRegistry((*default_registry(), SET_TASK_PRIORITY))
        )
        self.run_tool = run_tool
        """Runs one tool call (``engine.tools.execute``); a replay takes results from
        the log instead (``engine.runs.replay_sources.RecordedTools``)."""
        self.model = RecordingModel(client, log, settings.models)
        self.progress = progress or (lambda line: None)
        self._decided_by = "rules"  # who decided the current step: labels its phase.changed
        self.confinement = confinement
        self.digests = WorkspaceDigests()  # a cache of file hashes, not state
        if progress is not None:
            log.listeners.append(self._announce)
        if (watcher := watching(progress)) is not None:
            log.listeners.append(watcher.event)  # the live display: it observes only

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> None:
        """Step until the run finishes or waits for input."""
        while self.log.pipeline.status == "running":
            stops.check()  # one that landed where Python swallowed it
            self.step()

    def step(self) -> None:
        if self.settings.mode == "orchestrated":
            verdict = arbiter.decide(self.log.state, self.settings.limits, self.model)
        else:
            rules = decide(
                self.log.pipeline, self.settings.limits, model_trouble(self.log.orchestration)
            )
            verdict = arbiter.Verdict(
                step=rules,
                action=rules.action,
                parameters=rules.parameters(),
                reasoning=rules.reason,
                decided_by="rules",
            )
        step = verdict.step
        decided = self.log.append(
            ArbiterDecided(
                action=verdict.action,
                parameters=verdict.parameters,
                reasoning=verdict.reasoning,
                decided_by=verdict.decided_by,
                fallback_used=bool(verdict.fallback_reason),
                fallback_reason=verdict.fallback_reason,
            )
        )[0]
        cause = decided.version
        self._decided_by = verdict.decided_by
        if step.action == "ask":
            self.log.append(UserAsked(question=verdict.question), causation=cause)
            self._report(step)
            return
        try:
            entering = self._enter_phase(step)
        except IllegalTransition as e:
            self._finish("failed", f"the phase machine refused {step.action}: {e}", cause)
            return
        if step.action in ("finish", "complete"):
            # one batch: a crash between a final phase and run.finished would leave
            # a run that is running in a phase with no way out
            status = step.status if step.action == "finish" else (step.status or "completed")
            finished = RunFinished(status=status, reason=step.reason)
            self.log.append(*entering, finished, causation=cause)
            self._report(step)
            return
        if entering:
            self.log.append(*entering, causation=cause)
        if step.action == "set_status":
            self._set_status(step.task_id, step.status, cause)
        elif step.action in WORK:
            self._work(step, cause)
        self._report(step)

    def _enter_phase(self, step: Step) -> list[PhaseChanged]:
        """The phase change the step needs (none if it is in its phase already)."""
        target = step.phase
        current = self.log.pipeline.phase
        if not target or target == current:
            return []
        machine = PhaseMachine.restore(current)
        facts = PhaseFacts.from_tasks(self.log.pipeline.tasks)
        return [phase_changed_to(machine, target, step.reason, self._decided_by, facts)]

    def _finish(self, status: str, reason: str, cause: int) -> None:
        machine = PhaseMachine.restore(self.log.pipeline.phase)
        events = []
        if not machine.is_final:
            events.append(phase_changed_to(machine, status, reason, "rules", None))
        self.log.append(*events, RunFinished(status=status, reason=reason), causation=cause)

    def _set_status(self, task_id: str, status: str, cause: int, error: str = "") -> None:
        self.log.append(self._status_event(task_id, status, error), causation=cause)

    def _status_event(self, task_id: str, status: str, error: str = "") -> TaskUpdated:
        task = self.log.pipeline.tasks[task_id]
        limit = self.settings.limits.max_attempts_per_task
        check_status_change(task.status, status, attempts=task.attempts, max_attempts=limit)
        starting = status == "in_progress" and task.status in ("new", "failed", "qa_failed")
        attempt = task.attempts + 1 if starting else task.attempts
        return TaskUpdated(task_id=task_id, status=status, attempt=attempt, error=error)

    # -- work ------------------------------------------------------------------------

    def _work(self, step: Step, cause: int) -> None:
        action, task_id = step.action, step.task_id
        task = self.log.pipeline.tasks.get(task_id) if task_id else None
        if action == "code" and task is not None and task.status == "new":
            self._set_status(task_id, "in_progress", cause)
        if action == "debug" and task is not None:
            self._set_status(task_id, "in_progress", cause)  # rework: counts as an attempt
        task = self.log.pipeline.tasks.get(task_id) if task_id else None
        messages = opening(action, self.log.pipeline, task)
        specialist = specialist_for(action)
        outcome = run_conversation(
            log=self.log,
            model=self.model,
            tools=self.tools.subset(specialist.tools),
            settings=self.settings,
            workspace=self.workspace,
            role=specialist.role,
            messages=messages,
            conversation=f"{action}:{task_id or 'run'}",
            task_id=task_id,
            causation=cause,
            prompt_digest=digest(messages),
            confinement=self.confinement,
            digests=self.digests,
            run_tool=self.run_tool,
        )
        if self.settings.mode == "orchestrated":
            self.log.append(
                SpecialistConsulted(
                    specialist=specialist.name,
                    task_id=task_id,
                    outcome="finished" if outcome.finished else "unfinished",
                    summary=f"{action}: {outcome.reason} ({outcome.turns} turn(s))",
                ),
                causation=cause,
            )
        if outcome.finished or not task_id:
            return
        current = self.log.pipeline.tasks[task_id].status
        if action == "qa" and current == "qa_pending":
            # No verdict is never approval.
            self._set_status(
                task_id, "qa_failed", cause, f"review ended without a verdict: {outcome.reason}"
            )
        elif current == "in_progress":
            self._set_status(task_id, "failed", cause, outcome.reason)

    def _announce(self, recorded: RecordedEvent) -> None:
        """Say a failed model call when it happens, not only in the log."""
        event = recorded.data
        if isinstance(event, ModelFailed):
            call = self.log.orchestration.open_calls.get(event.call_id)
            who = f"{call.role} ({call.model}) " if call else ""
            self.progress(
                one_line(
                    f"model call failed: {who}at {event.endpoint or '?'}: {event.kind}: "
                    f"{event.detail} (attempt {event.attempt})"
                )
            )

    def _report(self, step: Step) -> None:
        p = self.log.pipeline
        tokens = self.log.orchestration.total_tokens
        task = f" {step.task_id}" if step.task_id else ""
        who = " (arbiter)" if self._decided_by == "arbiter" else ""
        self.progress(
            one_line(
                f"step {p.steps:>3} | {p.phase:<13} | {step.action}{task}{who} | {tokens} tokens "
                f"| {step.reason}"
            )
        )

    # -- resume ------------------------------------------------------------------------

    def recover(self, resumed: int | None = None) -> list[str]:
        """Settle tools that were requested but never reported (a crash in between).

        A file tool is settled by comparing the workspace with the hashes the log
        holds. A command is settled as interrupted and never run again: it ended
        with the engine (the run's lease proves that engine is gone, and the
        confinement ends a command's process tree with its engine); what it had
        written is recorded as its file changes (``changes_of_a_cut_command``: they
        were in no log, and a rewind left them). The task it was run for is marked
        failed with that reason, which the model reads in the task's next prompt, in
        the same write (a resume killed in between lost it); both are caused by
        ``resumed`` (the version of ``run.resumed``), which marks them, for a
        replay, as what the stop brought."""
        notes = []
        for pending in list(self.log.pipeline.pending_tools.values()):
            path = pending.arguments.get("path")
            follow: list[Event] = []
            cause = pending.version
            if pending.tool in _FILE_TOOLS and isinstance(path, str):
                event = self._settle_file_tool(pending, path)
            elif pending.tool == "run_command":
                clear_set_id(self.workspace)  # what the cut command left, as after any
                event = ToolExecuted(
                    call_id=pending.call_id,
                    tool=pending.tool,
                    ok=False,
                    error=_INTERRUPTED.format(tool=pending.tool),
                    files_changed=self._left_by_cut_command(pending.version, pending.call_id),
                )
                follow = [
                    self._status_event(task.task_id, "failed", event.error)
                    for task in self.log.pipeline.tasks.values()
                    if task.status == "in_progress"
                ]
                cause = resumed or pending.version
            else:
                error = _UNKNOWN.format(tool=pending.tool)
                event = ToolExecuted(
                    call_id=pending.call_id, tool=pending.tool, ok=False, error=error
                )
            self.log.append(event, *follow, causation=cause)
            notes.append(
                f"{pending.call_id} ({pending.tool}): {'applied' if event.ok else 'not applied'}"
                + (
                    f", {len(event.files_changed)} file(s) found changed recorded"
                    if not event.ok and event.files_changed
                    else ""
                )
            )
        return notes

    def _left_by_cut_command(self, requested: int, call_id: str) -> tuple[FileChange, ...]:
        """What the command requested at ``requested`` had written when it was cut. A
        fork cut at a command it had not the result of (its parent's request, its
        parent's version): the command never ran in the fork's workspace, which was
        made from the log, so nothing (it was a ``StopIteration`` from every resume)."""
        request = next(
            iter(self.log.store.read(self.log.run_id, after=requested - 1, upto=requested)), None
        )
        if request is None or getattr(request.data, "call_id", None) != call_id:
            return ()
        at = datetime.fromisoformat(request.recorded_at).timestamp()
        known = {path: (f.digest, f.size) for path, f in self.log.pipeline.files.items()}
        return changes_of_a_cut_command(Sandbox(self.workspace).root, at, known, self.log.store)

    def _settle_file_tool(self, pending: PendingTool, path: str) -> ToolExecuted:
        """A file tool's call cut by a crash, settled by what its file holds now: as
        the log last recorded it (not applied), what the call writes (applied), or
        neither: something else wrote it since (an editor, a person), which is
        recorded as found, so that the log's files are the workspace's, with the call
        not applied (it was once recorded as the call's own write). A file the log
        has no record of held what no one knows before the call: left as it is and
        not recorded (recorded as made by the call, a rewind deleted the person's
        file)."""
        call_id, tool = pending.call_id, pending.tool
        # The path comes from the log: it goes through the same resolver as when the
        # tool ran, so a path that was refused then (or edited since) is refused
        # again and nothing outside the workspace is read or recorded.
        sandbox = Sandbox(self.workspace)
        try:
            target = sandbox.resolve(path)
        except ToolError as e:  # outside, too long, too deep: refused as the tool was
            return ToolExecuted(call_id=call_id, tool=tool, ok=False, error=f"not applied: {e}")
        path = sandbox.relative(target)
        remove_partials(target)  # what the write left if it was killed before its rename
        known = self.log.pipeline.files.get(path)
        before = known.digest if known else None
        try:
            content: bytes | None = target.read_bytes() if target.is_file() else None
        except OSError:
            content = None
        now = hashlib.sha256(content).hexdigest() if content is not None else None
        if known is None and (content is not None or tool == "delete_file"):
            # what it held before the call is not known: neither the same content (an
            # empty __init__.py the person had), nor its ctime (a chmod, a hard link),
            # nor its birth time (an editor's save in the meantime) tells that the
            # call made it
            there = "is a file" if content is not None else "is gone, and a file"
            return ToolExecuted(
                call_id=call_id,
                tool=tool,
                ok=False,
                error=(
                    f"interrupted by a crash; {path} {there} the log has no record of, so "
                    "what this call did to it cannot be told: left as it is, not recorded; "
                    "not applied"
                ),
            )
        if now == before:
            return ToolExecuted(
                call_id=call_id,
                tool=tool,
                ok=False,
                error="interrupted by a crash before it changed the workspace; not applied",
            )
        if content is not None:
            self.log.store.put(content)
        change = FileChange(path=path, before=before, after=now, size=len(content or b""))
        if now == self._intended(pending, before):
            return ToolExecuted(
                call_id=call_id,
                tool=tool,
                ok=True,
                files_changed=(change,),
                result="completed before a crash (recovered by comparing the workspace)",
            )
        return ToolExecuted(
            call_id=call_id,
            tool=tool,
            ok=False,
            files_changed=(change,),
            error=(
                f"interrupted by a crash; {path} holds neither what the log last recorded "
                "nor what this call writes: something else changed it since (recorded as "
                "found); not applied"
            ),
        )

    def _intended(self, pending: PendingTool, before: str | None) -> str | bool | None:
        """The digest of what ``pending`` leaves at its path, from ``before`` (the
        digest the log last recorded there): None when it deletes the file, False when
        that cannot be told (its arguments, or the file before, are not at hand)."""
        store = self.log.store
        at = pending.version
        request = next(iter(store.read(self.log.run_id, after=at - 1, upto=at)), None)
        if request is None or not isinstance(request.data, ToolRequested):
            return False
        try:
            arguments = full_arguments(request.data.arguments, request.data.argument_refs, store)
            found = store.get(before) if before is not None else None
            written = written_by(pending.tool, arguments, found)
        except (ToolError, AutonomyError, UnicodeError):
            return False
        return hashlib.sha256(written).hexdigest() if written is not None else None


TITLE_SHOWN = 300
"""How much of a task's title a run's summary shows: a model's title has no length
cap (one of 3 MB was printed whole); ``state`` and ``audit tasks`` show it all."""


def summary(state: RunState) -> list[str]:
    """What a person wants to see when a run stops: status, tasks, files, tokens."""
    p = state.pipeline
    lines = [f"run {state.run_id}: {p.status}" + (f" ({p.reason})" if p.reason else "")]
    if p.status == "waiting_for_input":
        lines.append(f"  question: {p.question}")
    for task in p.tasks.values():
        lines.append(
            f"  task {task.task_id} [{task.status}] {clipped(task.title, TITLE_SHOWN)} "
            f"(attempts: {task.attempts})"
        )
    for path, f in sorted(p.files.items()):
        lines.append(f"  file {path} ({f.size} bytes, sha256 {f.digest[:12]})")
    for model, usage in state.orchestration.usage_by_model.items():
        lines.append(
            f"  model {model}: {usage.calls} calls, {usage.failures} failed attempts, "
            f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
        )
    return [one_line(line) for line in lines]  # each its own line, whatever a model wrote


def http_client(settings: Settings) -> httpx.Client:
    """The HTTP client for a run's model servers, sending each the key this machine
    keeps for it (``engine.model.credentials.ServerKeys``). Certificates are loaded only when
    a server is reached over https: loading them costs ~40 ms, a tenth of a short
    run, for the common case of a local server on plain http."""
    urls = [e.base_url for role in ROLE_NAMES for e in settings.models.get(role).endpoints()]
    return httpx.Client(
        verify=any(url.lower().startswith("https:") for url in urls), auth=load_server_keys()
    )


def hidden_from_commands(store: EventStore) -> list[Path]:
    """What a command the model runs must not see: the chain's key, the log (with
    its WAL files and leases), and the user's credentials (``confine.credentials``)."""
    hidden = [key_file(), server_keys_file(), *credentials()]
    db = getattr(store, "path", "")
    if db and db != ":memory:":
        # SQLite names its WAL after the file a link leads to, not the link: with
        # --db a link, the real -wal (the run's events, files and all) was readable
        for base in dict.fromkeys((db, os.path.realpath(db))):
            hidden += [Path(base + s) for s in ("", "-wal", "-shm", "-journal", ".leases")]
    return hidden


def confine_commands(settings: Settings, store: EventStore) -> Confinement:
    """The run's confinement, chosen once: ``ConfinementUnavailable`` (before any
    event is written) when ``tools.sandbox = "required"`` cannot be met."""
    tools = settings.tools
    return choose(
        tools.sandbox,
        network=tools.network,
        limits=tools.limits,
        hidden=hidden_from_commands(store),
    )


def _say_confinement(confinement: Confinement, progress: Progress) -> None:
    progress(f"commands run confined by {confinement.describe()}")
    if confinement.warning:
        progress(confinement.warning)


def start_run(
    store: EventStore,
    *,
    goal: str,
    workspace: Path,
    settings: Settings,
    http: httpx.Client | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> RunLog:
    """Record ``run.started`` for ``goal`` and run it to the end."""
    check_goal(goal)
    if run_id is not None:
        check_run_id(run_id)
    if settings.mode == "rules":
        warnings.warn(
            "rules mode is deprecated; orchestrated mode (the default) falls back to the "
            "rules whenever the arbiter's decision is invalid",
            DeprecationWarning,
            stacklevel=2,
        )
        if progress:  # DeprecationWarning is hidden outside __main__; say it on the CLI too
            progress("note: rules mode is deprecated; orchestrated mode is the default")
    check_workspace(workspace)
    check_log_place(getattr(store, "path", ""), workspace)
    confinement = confine_commands(settings, store)
    client = model_client(settings, http, progress)
    checked = check_models(client, settings, progress)
    workspace = workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    run_id = run_id or new_run_id()
    with store.lease(run_id, describe_owner()), workspace_lock(workspace, run_id):
        return _start(
            store, run_id, goal, workspace, settings, confinement, client, progress, checked
        )


@contextlib.contextmanager
def workspace_lock(workspace: Path, run_id: str) -> Iterator[None]:
    """One run at a time in a workspace: a run's lease is its own, and two runs (or a
    rewind of one while another runs) in one workspace wrote over each other's files,
    each recording the other's changes as its own. An exclusive ``flock`` on a file
    in the workspace's ``.autonomy/`` (hidden from commands), released with the
    process however it ends; ``LeaseHeld`` naming the run that holds it."""
    directory = workspace / ".autonomy" / "leases"
    try:
        directory.parent.mkdir(exist_ok=True)
    except OSError as e:
        raise EventStoreError(f"cannot lock the workspace {workspace}: {e.strerror or e}") from e
    try:
        with FileLeases(directory).hold("workspace", f"run {run_id}, {describe_owner()}"):
            yield
    except LeaseHeld as e:
        raise LeaseHeld(
            f"the workspace {workspace} is in use by {e.owner or 'another run'}; two runs in "
            "one workspace would write over each other's files: wait for it to stop, or give "
            "this run a workspace of its own",
            e.owner,
        ) from None


def check_log_place(db: Path | str, workspace: Path) -> None:
    """``ConfigError`` for a log file inside the workspace but not under a
    ``.autonomy/`` (where the default log is, and which commands never see): the
    model's commands write the workspace, and a rollback journal one planted beside
    the log replaced the whole log when it was next opened for writing."""
    if not db or str(db) == ":memory:" or is_postgres_url(db):
        return
    try:
        inside = Path(db).resolve().relative_to(workspace.resolve())
    except ValueError:
        return  # outside the workspace
    if ".autonomy" not in inside.parts[:-1]:
        raise ConfigError(
            f"the log {db} is inside the workspace {workspace}, where the model's commands "
            "write files beside it (and could replace it): keep it outside the workspace, "
            f"or in {Path(workspace) / '.autonomy'} (the default), which commands never see"
        )


def check_workspace(workspace: Path) -> None:
    """``ConfigError`` for a directory no run may have as its workspace
    (``not_a_project``): before anything is written, a log in it included."""
    if problem := not_a_project(workspace):
        raise ConfigError(
            f"the workspace {workspace} is {problem}: give the run a directory of its own"
        )
    if workspace.is_dir() and read_only(workspace):
        raise ConfigError(f"the workspace {workspace} is read-only: a run writes its files there")


MAX_GOAL_CHARS = 1_000_000
"""The longest goal: it goes into every request, and into the log whole."""


def check_goal(goal: str) -> None:
    """``ConfigError`` for a goal with nothing in it (a run must be told what to do),
    or longer than ``MAX_GOAL_CHARS``."""
    if not goal.strip():
        raise ConfigError("the goal is empty: say what the run should do")
    if len(goal) > MAX_GOAL_CHARS:
        raise ConfigError(
            f"the goal is {len(goal):,} characters, more than the {MAX_GOAL_CHARS:,} a goal "
            "may have (it goes into every request to the model)"
        )


def model_client(
    settings: Settings, http: httpx.Client | None, progress: Progress | None
) -> ModelClient:
    """The run's model client; it tells a watching ``progress`` of streamed pieces."""
    watcher = watching(progress)
    return ModelClient(
        http or http_client(settings), on_stream=watcher.streamed if watcher else None
    )


def check_models(
    client: ModelClient, settings: Settings, progress: Progress | None
) -> tuple[str, ...]:
    """The preflight's warnings, each said; ``PreflightFailed`` before any event is
    written when a role's model cannot be asked. Nothing when ``settings.preflight``
    is off."""
    if not settings.preflight:
        return ()
    warnings = tuple(preflight(client, settings.models))
    for warning in warnings:
        if progress:
            progress(f"warning: {warning}")
    return warnings


def _start(
    store: EventStore,
    run_id: str,
    goal: str,
    workspace: Path,
    settings: Settings,
    confinement: Confinement,
    client: ModelClient,
    progress: Progress | None,
    checked: tuple[str, ...],
) -> RunLog:
    log = RunLog.create(
        store,
        run_id,
        RunStarted(
            goal=goal,
            workspace=str(workspace),
            mode=settings.mode,
            config=msgspec.to_builtins(settings),
            engine_version=__version__,
            key_id=store.key_id,
            confinement=confinement.describe(),
            preflight=checked,
        ),
    )
    with _stops_recorded(log):
        if progress:
            progress(f"run {log.run_id} started in {one_line(str(workspace))}")
            _say_confinement(confinement, progress)
        engine = Engine(
            log,
            settings=settings,
            client=client,
            workspace=workspace,
            progress=progress,
            confinement=confinement,
        )
        learn_contexts(log, settings.models, client.http, causation=log.version, progress=progress)
        engine.run()
    return log


STOPPED_BY_USER = "interrupted by the user (Ctrl-C)"
STOPPED_BY_SIGNAL = {
    signal.SIGINT: STOPPED_BY_USER,
    signal.SIGTERM: "terminated by SIGTERM (a service manager, docker stop or kill)",
    signal.SIGHUP: "its terminal was closed (SIGHUP)",
}
STOPPED_BY_PIPE = "the reader of its output went away"
STOPPED_WITH_WORKER = "the worker running it was stopped"
STOP_REASONS = frozenset({*STOPPED_BY_SIGNAL.values(), STOPPED_BY_PIPE, STOPPED_WITH_WORKER})
"""What a ``run.finished`` says of a stop from outside the run, each cause in its own
words (a SIGTERM was once recorded as a Ctrl-C). Frozen: a replay knows such a stop
by its words (``is_user_stop``), and old logs keep theirs."""


class Stop(KeyboardInterrupt):
    """A stop from outside the run, with the reason its log records (a
    ``KeyboardInterrupt`` of Python's own, with none, is a Ctrl-C)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_user_stop(event: object) -> bool:
    """Whether ``event`` is the ``run.finished`` a stop from outside wrote (Ctrl-C, a
    signal, a worker stopped): an input from the world, like an answer, which a
    replay takes from the log."""
    return (
        isinstance(event, RunFinished)
        and event.status == "stopped"
        and event.reason in STOP_REASONS
    )


class RunInterrupted(Exception):
    """The run was stopped from outside (Ctrl-C, a signal); ``run.finished(stopped)``
    says so in the log and ``autonomy resume`` continues it. Not an
    ``AutonomyError``: it is no mistake."""

    def __init__(self, run_id: str, reason: str = STOPPED_BY_USER) -> None:
        super().__init__(f"run {run_id} was stopped: {reason}")
        self.run_id = run_id
        self.reason = reason


class RunCutOff(StoreUnavailable):
    """The log could not be reached in the middle of a run, so the run stopped where
    its log stops: nothing is recorded about it being cut off (there is nowhere to
    record it), and ``autonomy resume`` continues it as after a crash."""

    def __init__(self, run_id: str, error: StoreUnavailable) -> None:
        super().__init__(
            f"run {run_id} stopped: {error}; nothing after its last recorded event is lost"
        )
        self.run_id = run_id


@contextlib.contextmanager
def _stops_recorded(run: RunLog) -> Iterator[None]:
    """Around what a run does once its log says it runs (its first event written, or
    ``run.resumed``): on Ctrl-C, record why the run stopped (from the log as it is:
    the interrupt may have cut an append short) and raise ``RunInterrupted``; so too
    when the reader of its output went away (``autonomy run | head``: a line printed
    before the engine's first step was a run left running, nothing recorded). A log
    that cannot be reached stops the run with ``RunCutOff``."""
    try:
        yield
    except StoreUnavailable as e:
        raise RunCutOff(run.run_id, e) from e
    except (KeyboardInterrupt, BrokenPipeError) as e:
        stops.taken()
        reason = (
            e.reason
            if isinstance(e, Stop)
            else STOPPED_BY_PIPE
            if isinstance(e, BrokenPipeError)
            else STOPPED_BY_USER
        )
        log = RunLog(run.store, run.run_id)
        if log.pipeline.status == "running":
            log.append(RunFinished(status="stopped", reason=reason))
        elif log.pipeline.status == "stopped" and log.pipeline.reason in STOP_REASONS:
            reason = log.pipeline.reason  # a stop already recorded it: say that one
        raise RunInterrupted(log.run_id, reason) from None


def resume_run(
    store: EventStore,
    run_id: str,
    *,
    settings: Settings,
    http: httpx.Client | None = None,
    progress: Progress | None = None,
    prepare: Prepare | None = None,
) -> RunLog:
    """Continue a run that crashed or stopped, from its log alone. Refused
    (``LeaseHeld``) while another engine runs it. ``prepare`` is called with the
    run's log and workspace once the lease is held, before the engine starts (the
    faces pass ``engine.runs.workspace.finish_cut_rewind``)."""
    with store.lease(run_id, describe_owner()):
        return _resume(store, run_id, settings, http, progress, prepare)


Prepare = Callable[[RunLog, Path, "Progress | None"], None]
"""What ``resume_run`` has done to a run's workspace before its engine starts."""


def refuse_unresumable(run_id: str, pipeline: PipelineState) -> None:
    """``ResumeRefused`` unless a run in this state can be resumed: one waiting for an
    answer, or finished, cannot."""
    status = pipeline.status
    if status == "waiting_for_input":
        raise ResumeRefused(
            f"run {run_id} is waiting for an answer to: {pipeline.question}; "
            f'answer first with: autonomy answer {run_id} "..."'
        )
    if finished(pipeline):
        raise ResumeRefused(
            f"run {run_id} is {status} ({pipeline.reason}); there is nothing to resume"
        )


def finished(pipeline: PipelineState) -> bool:
    """Whether the run has ended for good: neither running, nor waiting for an
    answer, nor stopped (Ctrl-C) in a phase it can go on from."""
    status = pipeline.status
    stopped = status == "stopped" and pipeline.phase not in TERMINAL
    return status not in ("running", "new", "waiting_for_input") and not stopped


def _resume(
    store: EventStore,
    run_id: str,
    settings: Settings,
    http: httpx.Client | None,
    progress: Progress | None,
    prepare: Prepare | None = None,
) -> RunLog:
    log = RunLog(store, run_id)
    refuse_unresumable(run_id, log.pipeline)
    refuse_tampered(store, run_id, None, "nothing was resumed")
    workspace = Path(log.pipeline.workspace)
    if problem := workspace_problem(run_id, workspace, log.version, "nothing was run"):
        raise ResumeRefused(problem)
    check_log_place(getattr(store, "path", ""), workspace)
    with workspace_lock(workspace, run_id):
        return _resume_in(store, log, workspace, settings, http, progress, prepare)


def _resume_in(
    store: EventStore,
    log: RunLog,
    workspace: Path,
    settings: Settings,
    http: httpx.Client | None,
    progress: Progress | None,
    prepare: Prepare | None,
) -> RunLog:
    confinement = confine_commands(settings, store)
    client = model_client(settings, http, progress)
    checked = check_models(client, settings, progress)
    if progress:
        _say_confinement(confinement, progress)
    if prepare is not None:
        prepare(log, workspace, progress)
    engine = Engine(
        log,
        settings=settings,
        client=client,
        workspace=workspace,
        progress=progress,
        confinement=confinement,
    )
    with _stops_recorded(log):
        # marks where the previous engine stopped: a replay stops its own engine there
        resumed = log.append(
            RunResumed(
                engine_version=__version__,
                pending_tools=tuple(log.pipeline.pending_tools),
                open_calls=tuple(
                    c for c, i in log.orchestration.open_calls.items() if not i.failures
                ),
                config=msgspec.to_builtins(settings),
                preflight=checked,
            )
        )
        if resumed:
            learn_contexts(
                log, settings.models, engine.model.client.http, causation=resumed[0].version,
                progress=progress,
            )  # fmt: skip
        for note in engine.recover(resumed[0].version if resumed else None):
            if progress:
                progress(f"recovered {note}")
        engine.run()
    return log
