"""``autonomy report RUN_ID --html FILE``: one self-contained page, checked by parsing it."""

from __future__ import annotations

from contextlib import closing
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_audit import MARK, OTHER, RUN, DemoWithMistakes, record_synthetic_run

from engine.cli import cli
from engine.runs.demo import GOAL
from engine.storage import open_store
from engine.testing import ScriptedModelServer
from engine.web.pages import run_page, stylesheet
from events.schema import (
    ModelRequested,
    RunFinished,
    RunStarted,
    ToolExecuted,
    ToolRequested,
    UserAsked,
)

RUN_FLAGS = ("run", GOAL, "--api", "ollama", "--model", "qwen2.5-coder:7b")
HOSTILE = "hostile"
ASKING = "asking"
SCRIPT = "<script>alert('x')</script>"


class Page(HTMLParser):
    """The parts of a page the tests look at: sections, classed rows and their text,
    every tag and the URLs it refers to."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.rows: list[tuple[str, str]] = []  # (class, text)
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.ids: set[str] = set()
        self._section: str | None = None
        self._row: tuple[str, list[str]] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        attributes = dict(attrs)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        self.ids.update(v or "" for k, v in attrs if k == "id")
        if tag == "section":
            self._section = attributes.get("id") or ""
            self.sections[self._section] = ""
        if tag == "tr":
            self._row = (attributes.get("class") or "", [])

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = None
        if tag == "tr" and self._row is not None:
            self.rows.append((self._row[0], " ".join(self._row[1])))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._section is not None:
            self.sections[self._section] += data
        if self._row is not None:
            self._row[1].append(data)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report")
    db = base / "events.db"
    with ScriptedModelServer(DemoWithMistakes(), models=["qwen2.5-coder:7b"]) as server:
        result = CliRunner().invoke(
            cli,
            [
                *RUN_FLAGS,
                "--workspace",
                str(base / "ws"),
                "--db",
                str(db),
                "--model-url",
                server.url,
                "--run-id",
                RUN,
            ],
        )
    assert result.exit_code == 0, result.output
    record_synthetic_run(db)
    with closing(open_store(db)) as store:
        store.append(
            HOSTILE,
            [
                RunStarted(goal=f"goal {SCRIPT}", workspace="/w", mode="rules"),
                ToolRequested(call_id="h/t1", tool="read_file", arguments={"path": SCRIPT}),
                ToolExecuted(call_id="h/t1", tool="read_file", ok=False, error=f"bad {SCRIPT}"),
                RunFinished(status="failed", reason=f"because {SCRIPT}"),
            ],
            0,
        )
        store.append(
            ASKING,
            [RunStarted(goal="g", workspace="/w"), UserAsked(question="Which Python?")],
            0,
        )
    return db


def report(db: Path, run_id: str, out: Path) -> Page:
    result = CliRunner().invoke(cli, ["report", run_id, "--html", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return Page(out.read_text(encoding="utf-8"))


def test_the_page_has_every_section(db: Path, tmp_path: Path) -> None:
    page = report(db, RUN, tmp_path / "r.html")
    assert list(page.sections) == [
        "summary",
        "phases",
        "trace",
        "tasks",
        "decisions",
        "tool-calls",
        "model-failures",
        "tokens",
    ]
    assert "completed" in page.sections["summary"]
    assert "documentation" in page.sections["phases"]
    assert "t1 failed review" in page.sections["decisions"]
    assert "Write pytest tests for add" in page.sections["tasks"]
    assert "qwen2.5-coder:7b" in page.sections["tokens"]
    assert "analysis" in page.sections["tokens"] and "coding" in page.sections["tokens"]


def test_failed_tool_calls_are_marked_with_their_error(db: Path, tmp_path: Path) -> None:
    page = report(db, RUN, tmp_path / "r.html")
    failed = [text for css, text in page.rows if css == "failed"]
    assert len(failed) == 4
    assert "climbs out of the workspace" in failed[0] and MARK in failed[0]
    assert "too long or too deep" in failed[2]
    assert "does not exist" in failed[3]
    ok_rows = [text for css, text in page.rows if css == "" and "create_file" in text]
    assert ok_rows, "successful calls are listed too, unmarked"


def test_fallback_decisions_are_marked(db: Path, tmp_path: Path) -> None:
    page = report(db, OTHER, tmp_path / "r.html")
    [fallback] = [text for css, text in page.rows if css == "fallback"]
    assert "arbiter reply was not a valid decision" in fallback
    assert "never executed" in page.sections["tool-calls"]
    assert "big:70b" in page.sections["tokens"] and "arbiter" in page.sections["tokens"]


def test_the_page_is_self_contained(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    page = report(db, RUN, out)
    assert "script" not in page.tags
    assert "link" not in page.tags and "img" not in page.tags
    assert page.urls and all(url.startswith("#") for url in page.urls)  # within the page
    assert {url[1:] for url in page.urls} <= page.ids
    assert "style" in page.tags
    assert stylesheet() in out.read_text(encoding="utf-8")  # the service's own, inlined
    # wherever it is opened, a script that escaped the escaping would not run
    assert (
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'" in out.read_text(encoding="utf-8")
    )


def test_the_page_is_the_services_run_page_with_the_trace_folded(db: Path, tmp_path: Path) -> None:
    page = report(db, RUN, tmp_path / "r.html")
    with closing(open_store(db, read_only=True)) as store:
        served = Page(run_page(store, RUN))
        calls = [r for r in store.read(RUN) if isinstance(r.data, ModelRequested)]
    # the same templates: the service's sections, less what needs the server
    assert [s for s in served.sections if s in page.sections] == [
        "summary",
        "phases",
        "trace",
        "tasks",
    ]
    assert "state" in served.sections and "state" not in page.sections
    # a model call's prompt and answer are in the trace, folded (no script opens them)
    assert calls[0].data.messages[-1].content[:40] in page.sections["trace"]
    assert page.tags.count("details") == served.tags.count("details")


def test_a_run_waiting_for_input_shows_its_question_without_the_answer_box(
    db: Path, tmp_path: Path
) -> None:
    page = report(db, ASKING, tmp_path / "r.html")
    assert "Which Python?" in page.sections["answer"]
    assert "form" not in page.tags and "textarea" not in page.tags


def test_everything_from_the_log_is_escaped(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    page = report(db, HOSTILE, out)
    assert "script" not in page.tags
    assert SCRIPT not in out.read_text(encoding="utf-8")
    assert SCRIPT in page.sections["summary"]  # shown as text, not run
    [failed] = [text for css, text in page.rows if css == "failed"]
    assert f"bad {SCRIPT}" in failed


def test_an_unknown_run_is_a_clean_error(db: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["report", "nope", "--html", str(tmp_path / "r.html"), "--db", str(db)]
    )
    assert result.exit_code == 1
    assert "no run 'nope'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r.html").exists()


def test_a_report_that_cannot_be_written_leaves_the_one_there(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was written in place: a full disk left a truncated page where the last
    good report was, and an error that did not name the file."""
    out = tmp_path / "r.html"
    out.write_text("the last good report")

    def full(self: Path, data: bytes) -> int:
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    result = CliRunner().invoke(cli, ["report", RUN, "--html", str(out), "--db", str(db)])
    assert result.exit_code == 1 and f"cannot write {out}: No space left" in result.output
    assert out.read_text() == "the last good report"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"], "no partial file is left"


def test_a_report_never_replaces_the_log_another_database_or_what_is_not_a_file(
    db: Path, tmp_path: Path
) -> None:
    """A report is written beside its place and renamed over it: ``--html`` given the
    log's own path replaced the whole log with the page (exit 0, "wrote ..."), and as
    root ``--html /dev/full`` replaced the device with a file. Refused, each saying
    why, and nothing there changes; a report over an older report is still written."""
    import os
    import shutil

    log = tmp_path / "log.db"
    shutil.copy(db, log)
    other = tmp_path / "other.db"
    shutil.copy(db, other)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    cases = {
        log: "is the log's own file",
        tmp_path / "log.db-wal": "is the log's own file",
        other: "is an SQLite database (an event log?), which a report would replace",
        fifo: "is not a regular file (a device, a FIFO or a directory)",
        Path("/dev/null"): "is not a regular file",
    }
    before = {p: p.read_bytes() for p in (log, other)}
    for path, said in cases.items():
        result = CliRunner().invoke(cli, ["report", RUN, "--html", str(path), "--db", str(log)])
        assert result.exit_code in (1, 2) and said in result.output, (path, result.output)
        assert "Traceback" not in result.output
    assert {p: p.read_bytes() for p in (log, other)} == before
    assert fifo.is_fifo() and Path("/dev/null").is_char_device()
    older = tmp_path / "log.db.html"  # named after the log, but a report's
    older.write_text("an older report")
    assert "summary" in report(log, RUN, older).sections
