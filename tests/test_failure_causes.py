"""Why a run failed is shown, not only logged: a model server that is down, a model
that is not found (HTTP 404), every call refused (HTTP 400). The run's output names
each failure live and the cause at the end; ``runs`` shows the reason; the HTML
report lists every failed attempt and the run's end reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_model_client import refusing_url
from test_report import Page

from engine.cli import cli
from engine.testing import Reply, ScriptedModelServer

# no retries, so each call is one failed attempt, and the run gives up after 2 steps
CONFIG = "preflight = false\n[limits]\nno_progress_limit = 2\n" + "".join(
    f"[models.{role}]\nretries = 0\n" for role in ("arbiter", "coding", "reasoning", "analysis")
)


@contextmanager
def down() -> Iterator[str]:
    yield refusing_url()


@contextmanager
def answering(reply: Callable[[], Reply]) -> Iterator[str]:
    with ScriptedModelServer(lambda request: reply(), models=["m"]) as server:
        yield server.url


CASES: dict[str, tuple[Callable[[], Any], str, str]] = {
    "down": (down, "unavailable", "cannot connect"),
    "not-found": (
        lambda: answering(lambda: Reply.http_error(404, "model 'm' not found, try pulling it")),
        "http",
        "HTTP 404 Not Found: model 'm' not found, try pulling it",
    ),
    "bad-request": (
        lambda: answering(lambda: Reply.http_error(400, "exceed_context_size_error")),
        "http",
        "HTTP 400 Bad Request: exceed_context_size_error",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, Path]]:
    """Each case run once: its url, its output, and the log."""
    base = tmp_path_factory.mktemp("causes")
    db = base / "events.db"
    done = {}
    for name, (server, _kind, _detail) in CASES.items():
        workspace = base / name
        workspace.mkdir()
        (workspace / "autonomy.toml").write_text(CONFIG)
        with server() as url:
            result = CliRunner().invoke(
                cli,
                [
                    *("run", "build it", "--workspace", str(workspace), "--db", str(db)),
                    *("--model-url", url, "--model", "m", "--run-id", name),
                ],
            )
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        done[name] = (url, result.output, db)
    return done


@pytest.mark.parametrize("case", CASES)
def test_the_output_names_each_failure_live_and_the_cause_at_the_end(
    runs: dict[str, tuple[str, str, Path]], case: str
) -> None:
    url, output, _ = runs[case]
    _, kind, detail = CASES[case]
    assert f"model call failed: reasoning (m) at {url}: {kind}: " in output
    assert detail in output
    final = output.strip().splitlines()
    (ended,) = [line for line in final if line.startswith(f"run {case}: failed")]
    assert f"model server {url}: {kind}" in ended and detail in ended


@pytest.mark.parametrize("case", CASES)
def test_runs_shows_the_reason(runs: dict[str, tuple[str, str, Path]], case: str) -> None:
    url, _, db = runs[case]
    listed = CliRunner().invoke(cli, ["runs", "--db", str(db)])
    (row,) = [line for line in listed.output.splitlines() if line.startswith(case + " ")]
    assert f"model server {url}" in row


@pytest.mark.parametrize("case", CASES)
def test_the_report_lists_every_failed_attempt_and_the_end_reason(
    runs: dict[str, tuple[str, str, Path]], case: str, tmp_path: Path
) -> None:
    url, _, db = runs[case]
    _, kind, detail = CASES[case]
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", case, "--html", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    page = Page(out.read_text(encoding="utf-8"))
    assert f"model server {url}: {kind}" in page.sections["summary"]
    failures = [text for css, text in page.rows if css == "failed model-failure"]
    assert failures, page.sections["model-failures"]
    for row in failures:
        assert url in row and kind in row and detail in row and " m " in row
        assert row.split()[1].startswith("m")  # the call id without the run id (it is on hover)
    roles = {row.split()[2] for row in failures}
    assert "reasoning" in roles
    attempts = [row.split()[6] for row in failures]
    assert set(attempts) == {"1"}  # no retries: every call failed at its first attempt
