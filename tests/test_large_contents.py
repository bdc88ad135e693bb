"""Large contents are stored once: a big file the model writes is a blob, and every event
that carries it (the answer, the tool call, the next request) keeps a preview and the
blob's digest. The run still replays identically: the replay reads the texts back."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import msgspec
import pytest

from engine.agent.runner import start_run
from engine.config import Settings, load_settings
from engine.model import RoleConfig
from engine.model.stored import (
    PREVIEW_CHARS,
    blobs_of,
    full_answer,
    full_message,
    stored_answer,
    stored_form,
)
from engine.runs.demo import CALC_V1, GOAL, DemoModels
from engine.runs.replay import replay
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest
from events import (
    MemoryEventStore,
    Message,
    ModelRequested,
    ModelResponded,
    SQLiteEventStore,
    ToolCall,
    ToolRequested,
)

BIG = CALC_V1 + "# " + "0123456789" * 5_000 + "\n"  # 50 kB of valid Python
DIGEST = hashlib.sha256(BIG.encode()).hexdigest()


class BigCalc(DemoModels):
    """The demo models, but calc.py is written with 50 kB of comment."""

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        for name, args in reply.tool_calls:
            if name == "create_file" and isinstance(args, dict) and args.get("path") == "calc.py":
                return Reply.tool("create_file", path="calc.py", content=BIG)
        return reply


def roomy(url: str) -> Settings:
    """Every role on ``url``, with a context large enough that the conversation after
    the big file still carries it (so the next request repeats it)."""
    settings = load_settings(
        env={}, overrides={"model_url": url, "api": "ollama", "model": "m", "mode": "rules"}
    )
    coding: RoleConfig = msgspec.structs.replace(settings.models.coding, num_ctx=1_000_000)
    return msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, coding=coding)
    )


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("big")
    db = base / "events.db"
    store = SQLiteEventStore(db)
    with ScriptedModelServer(BigCalc(), models=["m"]) as server, httpx.Client() as http:
        start_run(
            store,
            goal=GOAL,
            workspace=base / "ws",
            settings=roomy(server.url),
            http=http,
            run_id="r",
        )
    store.close()
    return db


def test_a_big_file_is_in_no_event_only_in_one_blob(big_run: Path) -> None:
    store = SQLiteEventStore(big_run)
    rows = store.connection.execute("SELECT type, length(data), data FROM events").fetchall()
    assert max(size for _, size, _ in rows) < 10_000, "an event carries the file inline"
    carriers = {kind for kind, _, data in rows if DIGEST in data}
    # the answer, the tool call, the next request's repeat of the answer, the file change
    assert {"model.responded", "tool.requested", "model.requested", "tool.executed"} <= carriers
    assert store.connection.execute(
        "SELECT count(*) FROM blobs WHERE digest = ?", (DIGEST,)
    ).fetchone() == (1,)
    assert store.get(DIGEST).decode() == BIG
    requested = next(
        e.data
        for e in store.read("r")
        if isinstance(e.data, ToolRequested) and e.data.tool == "create_file"
    )
    assert requested.argument_refs == {"content": DIGEST}
    assert requested.arguments["content"] == BIG[:PREVIEW_CHARS]


def test_a_run_with_a_big_file_replays_identically(big_run: Path) -> None:
    store = SQLiteEventStore(big_run)
    result = replay(store, "r")
    assert result.identical, result.report()


def test_stored_forms_round_trip_through_the_blobs() -> None:
    blobs = MemoryEventStore()
    call = ToolCall(id="c", name="create_file", arguments={"path": "a.py", "content": BIG})
    message = Message(role="assistant", content=BIG, tool_calls=(call,))
    answer = ModelResponded(call_id="m", content=BIG, tool_calls=(call,))
    for full, kept in ((message, stored_form(message)), (answer, stored_answer(answer))):
        assert len(msgspec.json.encode(kept)) < 1_000
        for content in blobs_of(full, kept):
            blobs.put(content)
    assert full_message(stored_form(message), blobs) == message
    assert full_answer(stored_answer(answer), blobs) == answer
    small = Message(role="user", content="hi")
    assert stored_form(small) is small and list(blobs_of(small, small)) == []


def test_what_holds_no_long_text_is_its_own_stored_and_full_form() -> None:
    # nothing is copied or compared for the usual short message and answer
    blobs = MemoryEventStore()
    call = ToolCall(id="c", name="create_file", arguments={"path": "a.py", "content": "x"})
    message = Message(role="assistant", content="short", tool_calls=(call,))
    answer = ModelResponded(call_id="m", content="short", tool_calls=(call,))
    assert stored_form(message) is message and full_message(message, blobs) is message
    assert stored_answer(answer) is answer and full_answer(answer, blobs) is answer
    big = ToolCall(id="c", name="create_file", arguments={"path": "a.py", "content": BIG})
    moved = stored_form(Message(role="assistant", tool_calls=(big,)))
    assert stored_form(moved) is moved  # moved out once, not again


def test_the_next_request_refers_to_the_answer_s_blob(big_run: Path) -> None:
    store = SQLiteEventStore(big_run)
    repeats = [
        m
        for e in store.read("r")
        if isinstance(e.data, ModelRequested)
        for m in e.data.messages
        if m.tool_calls and m.tool_calls[0].argument_refs
    ]
    assert repeats and repeats[0].tool_calls[0].argument_refs == {"content": DIGEST}
