"""Settings: defaults < autonomy.toml < environment < flags, and every mistake named."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.config import (
    CONFIG_FILE,
    Limits,
    Settings,
    ToolSettings,
    dump_toml,
    load_settings,
    locate_config,
    point_all_roles,
    read_config,
    settings_from_mapping,
)
from engine.errors import ConfigError
from engine.model.roles import SECOND_HOST, Endpoint, Roles
from events import RunStarted, encode
from events.codec import Codec


def write(tmp_path: Path, text: str, name: str = CONFIG_FILE) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults --------------------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.mode == "orchestrated"
    assert settings.synchronous == "NORMAL"
    assert settings.limits == Limits(
        max_steps=60,
        max_attempts_per_task=3,
        max_turns_per_task=12,
        no_progress_limit=8,
        arbiter_repeat_limit=3,
        max_calls_per_answer=16,
    )
    assert settings.tools.allowlist == [["python", "-m", "pytest"], ["python", "-m", "py_compile"]]
    assert settings.tools.command_timeout == 120.0
    assert settings.tools.output_cap == 20000
    assert settings.models == Roles()


def test_no_file_no_env_no_overrides_gives_the_defaults() -> None:
    assert load_settings(env={}) == Settings()


def test_default_allowlists_are_not_shared_between_instances() -> None:
    first, second = ToolSettings(), ToolSettings()
    first.allowlist.append(["make"])
    assert second.allowlist == [["python", "-m", "pytest"], ["python", "-m", "py_compile"]]


# -- the file --------------------------------------------------------------------------


def test_file_values_are_laid_over_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mode = "orchestrated"
synchronous = "FULL"
[limits]
max_steps = 7
[tools]
allowlist = [["python", "-m", "pytest", "-q"]]
[models.coding]
base_url = "http://gpu-box:11434"
""",
    )
    settings = load_settings(path, env={})
    assert settings.mode == "orchestrated"
    assert settings.synchronous == "FULL"
    assert settings.limits.max_steps == 7
    assert settings.limits.max_attempts_per_task == 3  # untouched keys keep their default
    assert settings.tools.allowlist == [["python", "-m", "pytest", "-q"]]
    assert settings.models.coding.base_url == "http://gpu-box:11434"
    assert settings.models.coding.model == Roles().coding.model
    assert settings.models.arbiter == Roles().arbiter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[limits]\nmax_stepz = 1\n", "limits.max_stepz: unknown key; did you mean max_steps?"),
        ("modee = 'rules'\n", "modee: unknown key; did you mean mode?"),
        ("[limits]\nmax_steps = 'many'\n", "limits.max_steps: expected `int`, got `str`"),
        ("[limits]\nmax_steps = 0\n", "limits.max_steps: expected `int` >= 1"),
        ("limits = 3\n", "limits: expected a table"),
        ("mode = 'auto'\n", "mode: expected one of 'orchestrated', 'rules', got 'auto'"),
        ("synchronous = 'OFF'\n", "synchronous: expected one of"),
        ("[tools]\nallowlist = [['python', 1]]\n", "tools.allowlist[0][1]: expected `str`"),
        ("[tools]\ncommand_timeout = -1\n", "tools.command_timeout: expected `float` > 0"),
        ("[models.coding]\nmodle = 'x'\n", "models.coding.modle: unknown key; did you mean model?"),
        ("[models.coding]\nnum_ctx = 'big'\n", "models.coding.num_ctx: expected `int`, got `str`"),
        (
            "[models.coding]\nfallbacks = [{ url = 'http://x' }]\n",
            "models.coding.fallbacks[0].url: unknown key; the keys here are base_url, model, api",
        ),
        ("[models.painter]\nmodel = 'x'\n", "models.painter: unknown model role"),
        ("models = 'qwen'\n", "models: expected a table"),
        # values no run could use: each failed later, deep inside, before these checks
        # (an infinite read timeout was an OverflowError traceback from the socket; a
        # cpu limit past what setrlimit takes failed every command "in preexec_fn";
        # NaN is not JSON, so a NaN temperature went to the server as null)
        ("[models.coding]\nread_timeout = inf\n", "read_timeout: expected `float` <= 604800"),
        ("[models.coding]\ndeadline = 1e400\n", "deadline: expected `float` <= 604800"),
        ("[tools]\ncommand_timeout = inf\n", "command_timeout: expected `float` <= 604800"),
        ("[models.coding]\ntemperature = nan\n", "temperature: expected `float` >= 0"),
        ("[models.coding]\ntemperature = inf\n", "temperature: expected `float` <= 100"),
        ("[models.coding]\nseed = 99999999999999999999\n", "seed: expected `int` <= "),
        ("[models.coding]\nnum_ctx = 99999999999999999999\n", "num_ctx: expected `int` <= "),
        ("[models.coding]\nretries = 1000000\n", "retries: expected `int` <= 100"),
        ("[tools.limits]\ncpu_seconds = 99999999999999999999\n", "cpu_seconds: expected `int` <="),
        ("[tools.limits]\nmemory_mb = 9999999999999999\n", "memory_mb: expected `int` <="),
        ("[tools.limits]\nprocesses = 99999999\n", "processes: expected `int` <="),
        ("[tools]\nallowlist = [[]]\n", "tools.allowlist[0]: expected `array` of length >= 1"),
        ("[tools]\nallowlist = [['']]\n", "tools.allowlist[0][0]: expected `str` of length >= 1"),
        # a model server's URL is checked where it is read (http://[::1 was a traceback)
        ("[models.coding]\nbase_url = 'http://[::1'\n", "models.coding.base_url: 'http://[::1'"),
        ("[models.coding]\nbase_url = 'ftp://x'\n", "base_url: 'ftp://x' is not a server's URL"),
        (
            "[models.arbiter]\nfallbacks = [{ base_url = 'x', model = 'm' }]\n",
            "models.arbiter.fallbacks[0].base_url: 'x' is not a server's URL",
        ),
    ],
)
def test_a_wrong_key_or_type_is_an_error_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'mode = "rules"\n\n[limits\nmax_steps = 3\n')
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 3") as caught:
        read_config(path)
    assert str(path) in str(caught.value)


def test_a_config_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "autonomy.toml"
    path.write_bytes(b"mode = '\xff'\n")
    with pytest.raises(ConfigError, match="not valid TOML: 'utf-8' codec can't decode") as caught:
        read_config(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_a_config_file_larger_than_any_config_is_not_read(tmp_path: Path) -> None:
    """A model's command made a valid ``autonomy.toml`` of 64 MiB (comments), larger
    than a snapshot records: whose it was, the log could not say, and the next run
    took it for the user's."""
    path = write(tmp_path, 'mode = "rules"\n' + "# padding\n" * 120_000)
    with pytest.raises(ConfigError, match="larger than 1024 KiB, which no autonomy config is"):
        read_config(path)
    path.write_text('mode = "rules"\n' + "#\n" * 1000)
    assert read_config(path).mode == "rules"


def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(tmp_path)  # a directory


def test_settings_from_mapping_accepts_what_tomllib_gives() -> None:
    settings = settings_from_mapping({"limits": {"max_turns_per_task": 4}})
    assert settings.limits.max_turns_per_task == 4


# -- finding the file ------------------------------------------------------------------


def test_locate_config_prefers_the_explicit_file(tmp_path: Path) -> None:
    write(tmp_path, "")
    explicit = write(tmp_path, "", name="other.toml")
    assert locate_config(explicit, tmp_path) == explicit


def test_locate_config_finds_autonomy_toml_in_the_workspace(tmp_path: Path) -> None:
    assert locate_config(None, tmp_path) is None
    path = write(tmp_path, "")
    assert locate_config(None, tmp_path) == path
    assert locate_config(None, None) is None


@pytest.mark.parametrize("kind", ["directory", "dangling link"])
def test_a_workspace_autonomy_toml_that_is_no_file_is_an_error(tmp_path: Path, kind: str) -> None:
    """It was passed over, and the run went on with the defaults: the settings the
    person wrote for it (a smaller model, tighter limits) silently not applied."""
    path = tmp_path / "autonomy.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.toml")
    with pytest.raises(ConfigError, match=r"autonomy.toml is not a file .*make it one, or remove"):
        locate_config(None, tmp_path)


def test_an_explicit_config_file_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        locate_config(tmp_path / "missing.toml", tmp_path)


# -- the environment and the flags -----------------------------------------------------


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_steps = 10\n")
    assert load_settings(path, env={}).limits.max_steps == 10
    env = {"AUTONOMY_MAX_STEPS": "20"}
    assert load_settings(path, env=env).limits.max_steps == 20
    assert load_settings(path, env=env, overrides={"max_steps": 30}).limits.max_steps == 30


def test_none_overrides_are_ignored() -> None:
    settings = load_settings(env={"AUTONOMY_MODE": "orchestrated"}, overrides={"mode": None})
    assert settings.mode == "orchestrated"


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTONOMY_MAX_STEPS", "11")
    assert load_settings().limits.max_steps == 11


@pytest.mark.parametrize(
    ("value", "mode"), [("true", "orchestrated"), ("TRUE", "orchestrated"), ("false", "rules")]
)
def test_use_orchestration_is_understood_for_the_predecessors_sake(value: str, mode: str) -> None:
    assert load_settings(env={"USE_ORCHESTRATION": value}).mode == mode


def test_autonomy_mode_wins_over_use_orchestration() -> None:
    env = {"USE_ORCHESTRATION": "true", "AUTONOMY_MODE": "rules"}
    assert load_settings(env=env).mode == "rules"


def test_an_empty_variable_counts_as_unset() -> None:
    assert load_settings(env={"AUTONOMY_MAX_STEPS": "", "AUTONOMY_MODEL": " "}) == Settings()


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("AUTONOMY_MAX_STEPS", "abc", "expected `int`, got `str`"),
        ("AUTONOMY_MAX_STEPS", "-3", "expected `int` >= 1"),
        ("AUTONOMY_MODE", "auto", "expected one of 'orchestrated', 'rules'"),
        ("AUTONOMY_API", "grpc", "expected one of 'ollama', 'openai'"),
        (
            "AUTONOMY_MODEL_URL",
            "localhost:11434",
            "is not a server's URL; expected http://HOST:PORT",
        ),
        ("USE_ORCHESTRATION", "maybe", "expected true or false"),
    ],
)
def test_a_malformed_variable_is_an_error_naming_it(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={variable: value})
    assert str(caught.value).startswith(f"{variable}={value!r}: ")
    assert expected in str(caught.value)


def test_a_model_url_with_a_password_is_refused_without_repeating_it(tmp_path: Path) -> None:
    """The log keeps every run's settings: a password there would be in plain text."""
    url = "http://alice:s3cret@127.0.0.1:11434"
    path = write(tmp_path, f"[models.coding]\nbase_url = '{url}'\n")
    for load in (
        lambda: load_settings(path, env={}),
        lambda: load_settings(env={"AUTONOMY_MODEL_URL": url}),
        lambda: load_settings(env={}, overrides={"model_url": url}),
    ):
        with pytest.raises(ConfigError, match="carries a user name or password") as caught:
            load()
        assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)


def test_a_malformed_override_is_an_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--max-steps='lots': "):
        load_settings(env={}, overrides={"max_steps": "lots"})


def test_an_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown override 'max_stepz'"):
        load_settings(env={}, overrides={"max_stepz": 3})


def test_one_server_flags_point_every_role_at_it_and_clear_fallbacks() -> None:
    settings = load_settings(
        env={"AUTONOMY_MODEL_URL": "http://gpu:11434"},
        overrides={"api": "openai", "model": "qwen2.5-coder:7b"},
    )
    for role in ("arbiter", "coding", "reasoning", "analysis"):
        config = settings.models.get(role)
        assert config.endpoints() == (
            Endpoint(base_url="http://gpu:11434", model="qwen2.5-coder:7b", api="openai"),
        )
        assert config.num_ctx == Roles().get(role).num_ctx  # sampling options stay per role


def test_a_url_alone_keeps_each_roles_model() -> None:
    settings = load_settings(env={}, overrides={"model_url": "http://box:11434"})
    assert settings.models.coding.model == Roles().coding.model
    assert settings.models.arbiter.model == Roles().arbiter.model
    assert settings.models.coding.fallbacks == ()


def test_point_all_roles_without_arguments_only_clears_fallbacks() -> None:
    roles = point_all_roles(Roles())
    assert roles.coding.base_url == Roles().coding.base_url
    assert all(not roles.get(r).fallbacks for r in ("arbiter", "coding", "reasoning", "analysis"))
    assert Roles().coding.fallbacks[0].base_url == SECOND_HOST


# -- recording and writing -------------------------------------------------------------


def test_settings_encode_to_json_and_ride_on_run_started() -> None:
    settings = load_settings(env={}, overrides={"model_url": "http://x:1", "max_steps": 5})
    assert msgspec.json.decode(msgspec.json.encode(settings), type=Settings) == settings
    started = RunStarted(goal="g", workspace="/w", config=msgspec.to_builtins(settings))
    decoded = Codec().decode("run.started", 1, encode(started))
    assert isinstance(decoded, RunStarted)
    assert msgspec.convert(decoded.config, Settings) == settings


def test_dump_toml_reads_back_equal(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, '[models.reasoning]\nseed = 7\nmodel = "qwen \\"big\\" \\\\ 32b"\n'),
        env={"USE_ORCHESTRATION": "true"},
    )
    again = read_config(write(tmp_path, dump_toml(settings), name="again.toml"))
    assert again == settings
    assert again.models.reasoning.seed == 7


_text = st.text(max_size=12)


@given(
    model=_text,
    url=_text.map(lambda path: f"http://host:1/{path}"),  # any text where a URL has room
    allowlist=st.lists(st.lists(_text.filter(bool), min_size=1, max_size=3), max_size=3),
    max_steps=st.integers(1, 2**40),
    temperature=st.floats(0, 2, allow_nan=False),
)
def test_dump_toml_round_trips_any_text_and_numbers(
    model: str, url: str, allowlist: list[list[str]], max_steps: int, temperature: float
) -> None:
    replace = msgspec.structs.replace
    defaults = Settings()
    coding = replace(
        defaults.models.coding,
        model=model,
        temperature=temperature,
        fallbacks=(Endpoint(base_url=url, model=model),),
    )
    settings = replace(
        defaults,
        limits=replace(defaults.limits, max_steps=max_steps),
        tools=replace(defaults.tools, allowlist=allowlist),
        models=replace(defaults.models, coding=coding),
    )
    assert settings_from_mapping(tomllib.loads(dump_toml(settings))) == settings


def test_toml_nested_too_deeply_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    """tomllib parses nested arrays by recursion: 50,000 levels in a config file (or
    a workspace's autonomy.toml, or servers.toml) ended every command in a
    RecursionError."""
    path = write(tmp_path, "mode = " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError, match="not valid TOML: nested too deeply") as caught:
        read_config(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("toml", "refused"),
    [
        ("[models.coding]\nbase_url = 'http://gpu-box:11434'\n", "models.coding.base_url"),
        (
            "[models.arbiter]\nfallbacks = [{ base_url = 'https://10.0.0.7:8000', model = 'm' }]\n",
            "models.arbiter.fallbacks[0].base_url",
        ),
        ("[models.coding]\nbase_url = 'http://localhost.example.com:1'\n", "models.coding"),
        ("[models.coding]\nbase_url = 'http://127.0.0.1:8000'\n", ""),
        ("[models.coding]\nbase_url = 'http://[::1]:8000'\n", ""),
        ("[models.coding]\nbase_url = 'http://localhost:8000'\n", ""),
    ],
)
def test_a_workspaces_own_config_names_only_servers_on_this_machine(
    tmp_path: Path, toml: str, refused: str
) -> None:
    """The server gets every prompt and the project's code, and the workspace is
    written by the model's commands (past what the log can attribute) and by whoever
    made the project: a server elsewhere is the user's to name."""
    path = write(tmp_path, toml)
    if refused:
        with pytest.raises(ConfigError, match="a server not on this machine") as raised:
            load_settings(path, env={}, in_workspace=True)
        assert refused in str(raised.value)
        given = load_settings(
            path, env={}, overrides={"model_url": "http://gpu:1"}, in_workspace=True
        )
        assert given.models.coding.base_url == "http://gpu:1"
        assert load_settings(path, env={}).models  # named with --config: the user's choice
    else:
        assert load_settings(path, env={}, in_workspace=True).models


def test_an_environment_variable_that_is_not_utf8_is_a_config_error() -> None:
    """A byte that is not UTF-8 in AUTONOMY_MODE (or AUTONOMY_MODEL_URL...) was a
    UnicodeEncodeError traceback; on the command line the same byte is refused."""
    for var in ("AUTONOMY_MODE", "AUTONOMY_MAX_STEPS", "AUTONOMY_MODEL_URL"):
        with pytest.raises(ConfigError, match=rf"{var}='a\\xffb': not UTF-8 text"):
            load_settings(env={var: "a\udcffb"})


def test_a_model_server_url_with_a_space_or_an_empty_model_is_refused(tmp_path: Path) -> None:
    """``base_url = "http://exa mple.com"`` was accepted and then reported as
    "cannot connect (connection refused)"; ``model = ""`` was accepted, and every
    request named no model; a NUL in a model's name was sent in every request."""
    for table, said in (
        (
            'base_url = "http://exa mple.com"',
            "models.coding.base_url: 'http://exa mple.com' holds a space",
        ),
        ('model = ""', "models.coding.model: empty"),
        ('model = "a\\u0000b"', "models.coding.model: 'a\\x00b' holds a control character"),
    ):
        (tmp_path / "autonomy.toml").write_text(f"[models.coding]\n{table}\n")
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_settings(tmp_path / "autonomy.toml", env={})
    with pytest.raises(ConfigError, match="holds a space or a line break"):
        load_settings(env={}, overrides={"model_url": "http://127.0.0.1:1/\nx"})


def test_the_config_printed_into_a_file_reads_back_whatever_it_holds(tmp_path: Path) -> None:
    """`autonomy config > autonomy.toml` of a model name holding a tag character
    (U+E0041) wrote it escaped as for a terminal, a surrogate pair, which no TOML
    reader takes: the file it prints into is data, written exactly."""
    import subprocess
    import sys

    name = "m\U000e0041x \u200b"
    config = tmp_path / "cfg.toml"
    config.write_text(f'[models.coding]\nmodel = "{name}"\n', encoding="utf-8")
    autonomy = Path(sys.executable).parent / "autonomy"
    printed = subprocess.run(
        [str(autonomy), "config", "--config", str(config)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "AUTONOMY_HOME": str(tmp_path / "home")},
    )
    assert printed.returncode == 0, printed.stderr
    assert tomllib.loads(printed.stdout.decode())["models"]["coding"]["model"] == name
