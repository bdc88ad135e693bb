"""The preflight: before a run writes its first event, every role's model is checked,
and a problem is one clear error naming the URL, the model and the likely fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner
from test_engine_run import OneFile
from test_model_client import refusing_url

from engine.agent.runlog import RunLog
from engine.cli import cli
from engine.config import load_settings
from engine.errors import PreflightFailed
from engine.model import Endpoint, ModelClient, Roles
from engine.model.preflight import preflight
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer
from events import RunResumed, RunStarted


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def roles_at(url: str, model: str = "m", api: str = "ollama") -> Roles:
    return load_settings(env={}, overrides={"model_url": url, "model": model, "api": api}).models


def check(http: httpx.Client, roles: Roles) -> list[str]:
    return preflight(ModelClient(http), roles)


def run(tmp_path: Path, url: str, *flags: str, model: str = "m") -> Any:
    result = CliRunner().invoke(
        cli,
        [
            *(
                "run",
                "build it",
                "--workspace",
                str(tmp_path / "ws"),
                "--db",
                str(tmp_path / "e.db"),
            ),
            *("--model-url", url, "--model", model, "--run-id", "r", *flags),
        ],
    )
    assert "Traceback" not in result.output, result.output
    return result


def events(tmp_path: Path) -> list[Any]:
    with open_store(tmp_path / "e.db") as store:
        return [e.data for e in store.read("r")]


# -- problems: one Error line, nothing written ------------------------------------------------


def test_a_server_that_is_down_stops_the_run_before_any_event(tmp_path: Path) -> None:
    url = refusing_url()
    result = run(tmp_path, url)
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: preflight: model m at " + url)
    assert "cannot connect (connection refused); is the server running?" in line
    assert "start it with: ollama serve" in line
    assert "--no-preflight" in line
    assert events(tmp_path) == []


def test_a_model_that_is_not_pulled_names_the_pull_command_and_what_the_server_has(
    http: httpx.Client,
) -> None:
    with (
        ScriptedModelServer(models=["qwen2.5:14b"]) as server,
        pytest.raises(PreflightFailed) as caught,
    ):
        check(http, roles_at(server.url, "llama3.2"))
    message = str(caught.value)
    assert f"model llama3.2 at {server.url}: not on this server (it has: qwen2.5:14b)" in message
    assert "ollama pull llama3.2" in message
    assert not server.chat_requests  # nothing was asked of a model


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_the_models_a_server_lists_are_named_at_a_readable_length(
    http: httpx.Client, api: str
) -> None:
    """A server listing twelve names of 300 KB each made a 3 MB error line (100 KB
    here: Ollama's listing holds each name twice, under the reply cap)."""
    names = [f"{n}" + "x" * 100_000 for n in range(12)]
    with (
        ScriptedModelServer(models=names, apis=[api]) as server,
        pytest.raises(PreflightFailed) as caught,
    ):
        check(http, roles_at(server.url, "m", api=api))
    message = str(caught.value)
    assert len(message) < 2_000, len(message)
    assert "0" + "x" * 98 + "…, 1" + "x" * 98 + "…" in message
    assert message.count("…") == 11  # ten names cut, and the two not shown


def test_a_url_ending_in_v1_is_told_to_drop_it(http: httpx.Client) -> None:
    with ScriptedModelServer(models=["m"]) as server:
        for api in ("ollama", "openai"):
            with pytest.raises(PreflightFailed, match="drop the trailing /v1") as caught:
                check(http, roles_at(server.url + "/v1", api=api))
            assert f"--model-url {server.url}" in str(caught.value)


def test_an_openai_server_addressed_as_ollama_is_told_to_use_api_openai(
    http: httpx.Client,
) -> None:
    with ScriptedModelServer(models=["m"], apis=["openai"]) as server:
        with pytest.raises(PreflightFailed, match="use --api openai"):
            check(http, roles_at(server.url))
        assert check(http, roles_at(server.url, api="openai")) == []


def test_an_openai_server_that_serves_other_models_lists_them(http: httpx.Client) -> None:
    with (
        ScriptedModelServer(models=["a", "b"], apis=["openai"]) as server,
        pytest.raises(PreflightFailed, match=r"not served here \(it serves: a, b\)"),
    ):
        check(http, roles_at(server.url, "m", api="openai"))


def test_every_unusable_role_is_one_line_of_the_error(http: httpx.Client) -> None:
    down = refusing_url()
    with ScriptedModelServer(models=["m"]) as server:
        roles = roles_at(server.url)
        coding = Endpoint(base_url=down, model="m")
        roles = msgspec.structs.replace(
            roles,
            coding=msgspec.structs.replace(roles.coding, base_url=down),
            analysis=msgspec.structs.replace(roles.analysis, model="gone"),
        )
        with pytest.raises(PreflightFailed) as caught:
            check(http, roles)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("preflight: the models cannot be asked")
    assert lines[1:] == [
        f"  coding: model m at {coding.label}: cannot connect (connection refused); is the "
        "server running? (start it with: ollama serve)",
        f"  analysis: model gone at {server.url}: not on this server (it has: m); "
        "fetch it with: ollama pull gone",
    ]


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_a_name_the_server_lists_stays_on_its_line(tmp_path: Path, api: str) -> None:
    """A name with line breaks printed lines of autonomy's own under the warning (or
    the error): "run pre3: completed (2 task(s) completed)" above a run that failed."""
    fake = "evil\nrun r: completed (2 task(s) completed)\r\n"
    with ScriptedModelServer(OneFile(), models=[fake], apis=[api]) as server:
        result = run(tmp_path, server.url, "--api", api, "--max-steps", "1")
    lines = result.output.splitlines()
    assert not [line for line in lines if line.startswith("run r: completed (2")], lines
    said = "evil\\nrun r: completed (2 task(s) completed)\\x0d\\n"
    assert [line for line in lines if said in line and line.startswith(("warning:", "Error:"))]


# -- warnings: said, recorded, and the run goes on -------------------------------------------


def test_a_server_that_answers_with_its_one_model_is_a_warning_in_the_output_and_the_log(
    tmp_path: Path,
) -> None:
    # llama-server lists its one model and answers every name with it
    with ScriptedModelServer(OneFile(), models=["Qwen2.5-7B.gguf"], apis=["openai"]) as server:
        result = run(tmp_path, server.url, "--api", "openai")
    assert result.exit_code == 0, result.output
    warning = (
        f"model m at {server.url}: the server lists only Qwen2.5-7B.gguf; it will answer in "
        "its place (servers such as llama-server ignore the name asked for)"
    )
    assert f"warning: {warning}" in result.output
    started = events(tmp_path)[0]
    assert isinstance(started, RunStarted) and started.preflight == (warning,)


def test_a_fallback_that_serves_for_a_primary_that_is_down_is_a_warning(
    http: httpx.Client,
) -> None:
    down = refusing_url()
    with ScriptedModelServer(models=["m"]) as server:
        roles = roles_at(down)
        fallback = (Endpoint(base_url=server.url, model="m"),)
        roles = msgspec.structs.replace(
            roles, reasoning=msgspec.structs.replace(roles.reasoning, fallbacks=fallback)
        )
        with pytest.raises(PreflightFailed) as caught:
            check(http, roles)
        assert "reasoning" not in str(caught.value)  # its fallback serves it
        only = Roles(
            **{name: roles.reasoning for name in ("arbiter", "coding", "reasoning", "analysis")}
        )
        (warning,) = check(http, only)
    assert warning.startswith(f"model m at {down}: cannot connect")
    assert warning.endswith(f"the fallback {server.url} (m) serves instead")


# -- off switch, resume, replay --------------------------------------------------------------


def test_no_preflight_skips_it_and_the_run_ends_with_the_cause(tmp_path: Path) -> None:
    url = refusing_url()
    result = run(tmp_path, url, "--no-preflight", "--max-steps", "3")
    assert result.exit_code == 1
    assert f"model call failed: reasoning (m) at {url}: unavailable" in result.output
    log = events(tmp_path)
    assert isinstance(log[0], RunStarted) and log[0].preflight == ()
    assert f"model server {url}" in log[-1].reason or url in log[-1].reason, log[-1]


def test_the_config_key_turns_it_off_too(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "autonomy.toml").write_text("preflight = false\n")
    result = run(tmp_path, refusing_url(), "--max-steps", "1")
    assert "preflight" not in result.output
    assert isinstance(events(tmp_path)[0], RunStarted)


def test_resume_checks_before_it_writes_and_a_replay_needs_no_server(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with open_store(tmp_path / "e.db") as store:  # a run that crashed once it had started
        RunLog.create(store, "r", RunStarted(goal="build it", workspace=str(workspace)))
    before = events(tmp_path)

    def resume(url: str) -> Any:
        db = str(tmp_path / "e.db")
        return CliRunner().invoke(
            cli, ["resume", "r", "--db", db, "--model-url", url, "--model", "m"]
        )

    resumed = resume(refusing_url())
    assert resumed.exit_code == 1 and resumed.output.startswith("Error: preflight:")
    assert events(tmp_path) == before  # no run.resumed
    with ScriptedModelServer(OneFile(), models=["m"]) as server:
        resumed = resume(server.url)
    assert resumed.exit_code == 0, resumed.output
    assert any(isinstance(e, RunResumed) for e in events(tmp_path))
    replayed = CliRunner().invoke(cli, ["replay", "r", "--db", str(tmp_path / "e.db")])
    assert replayed.exit_code == 0, replayed.output


def test_the_scripted_server_answers_only_the_apis_it_speaks(http: httpx.Client) -> None:
    with ScriptedModelServer([Reply.text("hi")], apis=["openai"]) as server:
        assert http.get(f"{server.url}/api/tags").status_code == 404
        assert http.post(f"{server.url}/api/chat", json={}).status_code == 404
        assert http.get(f"{server.url}/v1/models").status_code == 200


def test_a_server_that_is_down_is_one_line_naming_every_model_asked_of_it(
    http: httpx.Client,
) -> None:
    url = refusing_url()
    replace = msgspec.structs.replace
    roles = roles_at(url, "a")
    roles = replace(
        roles,
        coding=replace(roles.coding, model="b"),
        reasoning=replace(roles.reasoning, model="b"),
    )
    with pytest.raises(PreflightFailed) as caught:
        check(http, roles)
    assert str(caught.value).startswith(
        f"preflight: models a (arbiter, analysis), b (coding, reasoning) at {url}: "
        "cannot connect (connection refused)"
    )
