"""Settings: what a run may do and which models it talks to, as data.

Four layers, each over the one before::

    defaults  <  autonomy.toml  <  environment  <  CLI flags (``overrides``)

``autonomy.toml`` is read with ``tomllib`` and converted with ``msgspec.convert``
into frozen Structs that forbid unknown fields, so a wrong key or type is a
``ConfigError`` naming it (``limits.max_stepz: unknown key; did you mean
max_steps?``). Every key, with its default::

    mode = "orchestrated"           # or "rules" (deprecated): who picks the next step
    synchronous = "NORMAL"          # or "FULL": see engine.storage
    preflight = true                # check every role's model before a run starts

    [limits]
    max_steps = 60                  # coordinator steps per run
    max_attempts_per_task = 3       # then the task is skipped
    max_turns_per_task = 12         # model turns in one task's conversation
    no_progress_limit = 8           # steps without a file or task change -> failed
    arbiter_repeat_limit = 3        # the same arbiter decision in a row

    [tools]
    allowlist = [["python", "-m", "pytest"], ["python", "-m", "py_compile"]]
    command_timeout = 120.0         # seconds per run_command
    output_cap = 20000              # characters of command output kept
    sandbox = "auto"                # "auto" | "required" | "off": see engine.tools.confine
    network = false                 # whether commands may use the network

    [tools.limits]                  # per command; 0: no limit
    cpu_seconds = 600
    memory_mb = 4096                # address space
    file_size_mb = 256
    processes = 256

    [models.coding]                 # one table per role; see engine.model.roles
    model = "qwen2.5-coder:32b"
    max_answer_tokens = 2048        # unset: a quarter of the context; 0: no cap

The environment: ``AUTONOMY_MODE``, ``USE_ORCHESTRATION=true|false`` (the
predecessor's switch; ``AUTONOMY_MODE`` wins when both are set),
``AUTONOMY_MAX_STEPS``, ``AUTONOMY_SANDBOX``, ``AUTONOMY_PREFLIGHT``, and ``AUTONOMY_MODEL_URL``, ``AUTONOMY_API``,
``AUTONOMY_MODEL``. The last three (and the flags ``--model-url``, ``--api``,
``--model``) point every role at one server and one model at once and clear the
fallbacks: the common case of a single local Ollama. ``autonomy.toml`` sets roles
one by one.

``Settings`` encodes to JSON with msgspec; ``run.started`` records it.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from engine.errors import ConfigError
from engine.model.roles import ROLE_NAMES, Roles, Seconds, roles_from_mapping
from engine.model.wire import Api
from engine.terminal import unicode_text
from engine.tools.confine import CommandLimits, SandboxSetting

CONFIG_FILE = "autonomy.toml"
"""The config file ``locate_config`` looks for in a workspace."""

Mode = Literal["orchestrated", "rules"]
Synchronous = Literal["NORMAL", "FULL"]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Argv = Annotated[list[Annotated[str, msgspec.Meta(min_length=1)]], msgspec.Meta(min_length=1)]
"""An allowed command's leading words: at least one, none empty."""


def _default_allowlist() -> list[list[str]]:
    return [["python", "-m", "pytest"], ["python", "-m", "py_compile"]]


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The bounds that make every loop of the engine finite."""

    max_steps: PositiveInt = 60
    max_attempts_per_task: PositiveInt = 3
    max_turns_per_task: PositiveInt = 12
    no_progress_limit: PositiveInt = 8
    arbiter_repeat_limit: PositiveInt = 3
    max_calls_per_answer: PositiveInt = 16
    """Tool calls run from one model answer; each one past it is answered with an
    error saying so (a model stuck in a loop can emit thousands in one answer)."""


class ToolSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What ``run_command`` may run, for how long, and how much output is kept."""

    allowlist: list[Argv] = msgspec.field(default_factory=_default_allowlist)
    command_timeout: Seconds = 120.0
    output_cap: Annotated[int, msgspec.Meta(ge=1, le=2**30)] = 20000
    sandbox: SandboxSetting = "auto"
    network: bool = False
    limits: CommandLimits = msgspec.field(default_factory=CommandLimits)


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything configurable about a run. ``Settings()`` is the default set-up."""

    mode: Mode = "orchestrated"
    limits: Limits = msgspec.field(default_factory=Limits)
    tools: ToolSettings = msgspec.field(default_factory=ToolSettings)
    models: Roles = msgspec.field(default_factory=Roles)
    synchronous: Synchronous = "NORMAL"
    preflight: bool = True
    """Check every role's model server and model before a run starts or resumes
    (``engine.model.preflight``)."""


ENV_VARS: Mapping[str, str] = {
    "AUTONOMY_MODE": "mode",
    "AUTONOMY_MAX_STEPS": "max_steps",
    "AUTONOMY_MODEL_URL": "model_url",
    "AUTONOMY_API": "api",
    "AUTONOMY_MODEL": "model",
    "AUTONOMY_SANDBOX": "sandbox",
    "AUTONOMY_PREFLIGHT": "preflight",
}
"""Environment variable -> the override it sets (``USE_ORCHESTRATION`` aside)."""

_OVERRIDE_TYPES: Mapping[str, Any] = {
    "mode": Mode,
    "max_steps": PositiveInt,
    "model_url": str,
    "api": Api,
    "model": str,
    "sandbox": SandboxSetting,
    "preflight": bool,
}


# -- loading -----------------------------------------------------------------------------


def locate_config(config_file: Path | str | None, workspace: Path | str | None) -> Path | None:
    """The config file to read: ``config_file`` if given (it must exist), else
    ``autonomy.toml`` in ``workspace`` when there is one, else None."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist or is not a file")
        return path
    if workspace is not None:
        candidate = Path(workspace) / CONFIG_FILE
        if candidate.is_file():
            return candidate
        if os.path.lexists(candidate):  # it was ignored, and the run took the defaults
            raise ConfigError(
                f"{candidate} is not a file (a directory, a link to nothing, a FIFO...): "
                "the settings are read from a file of that name; make it one, or remove it"
            )
    return None


def load_settings(
    config_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Settings | None = None,
    in_workspace: bool = False,
) -> Settings:
    """The effective settings: defaults (or ``base``, e.g. the settings a run
    recorded when it started), then ``config_file``, then ``env``
    (``os.environ`` when None), then ``overrides`` (CLI flags; None values are
    ignored). Keys of ``overrides``: mode, max_steps, model_url, api, model.
    ``in_workspace``: ``config_file`` is the workspace's own, found there rather
    than named, and may only tighten confinement (``check_tightens``).

    Raises ``ConfigError`` naming the file and key, the variable or the flag."""
    if config_file is not None:
        settings = read_config(config_file)
    else:
        settings = base if base is not None else Settings()
    layered = _from_env(os.environ if env is None else env)
    for key, value in (overrides or {}).items():
        if key not in _OVERRIDE_TYPES:
            raise ConfigError(
                f"unknown override {key!r}; the overrides are {', '.join(_OVERRIDE_TYPES)}"
            )
        if value is not None:
            layered[key] = _convert(value, key, f"--{key.replace('_', '-')}")
    if config_file is not None and in_workspace:
        check_tightens(settings.tools, config_file, sandbox_given="sandbox" in layered)
        if "model_url" not in layered:  # else every role's server is the one given
            check_servers_here(settings.models, config_file)
    return _checked(_apply(settings, layered))


def check_servers_here(models: Roles, path: Path) -> None:
    """``ConfigError`` when the workspace's own config file ``path`` names a model
    server that is not on this machine. That server gets every prompt and, in them,
    the project's code; and the workspace is what the model's commands write (a
    command that changed more files than a command's changes are recorded for left
    an ``autonomy.toml`` the log could not attribute) and what a project someone
    else made brings along. A server elsewhere is named by the user: ``--config``,
    the environment, the flags."""
    for role in ROLE_NAMES:
        config = getattr(models, role)
        for i, endpoint in enumerate(config.endpoints()):
            if not on_this_machine(endpoint.base_url):
                key = f"models.{role}." + (f"fallbacks[{i - 1}]." if i else "") + "base_url"
                raise ConfigError(
                    f"{path}: {key} = {_shown(endpoint.base_url)!r} is a server not on this "
                    "machine: a workspace's own autonomy.toml may name only servers on this "
                    "machine (localhost, 127.0.0.1, ::1), since whoever wrote the workspace "
                    "(the model's commands, a project's authors) would choose where your "
                    "prompts and code go; name it with --model-url (or AUTONOMY_MODEL_URL), "
                    "or name the file with --config (or AUTONOMY_CONFIG)"
                )


def on_this_machine(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback (by name ``localhost``, or
    a loopback address): not a name that only resolves to one today."""
    import ipaddress

    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_SANDBOX_STRENGTH = {"off": 0, "auto": 1, "required": 2}


def check_tightens(tools: ToolSettings, path: Path, *, sandbox_given: bool = False) -> None:
    """``ConfigError`` when the workspace's own config file ``path`` loosens how
    commands are confined (``CONFINEMENT_KEYS``) beyond the defaults: a weaker
    sandbox, the network, a larger or no resource limit. The workspace is what the
    model's commands write: an ``autonomy.toml`` one of them left there would
    otherwise unconfine the next run in it. A file named with ``--config``, the
    environment and the flags are the user's own, and may loosen (``sandbox_given``:
    the sandbox is set by one of those, whatever the file says)."""
    default = ToolSettings()
    loosened = []
    weaker = _SANDBOX_STRENGTH[tools.sandbox] < _SANDBOX_STRENGTH[default.sandbox]
    if weaker and not sandbox_given:
        loosened.append(f'tools.sandbox = "{tools.sandbox}"')
    if tools.network and not default.network:
        loosened.append("tools.network = true")
    for name in tools.limits.__struct_fields__:
        value, limit = getattr(tools.limits, name), getattr(default.limits, name)
        if limit and (value == 0 or value > limit):
            loosened.append(f"tools.limits.{name} = {value} (the default is {limit})")
    if loosened:
        raise ConfigError(
            f"{path}: {'; '.join(loosened)}: a workspace's own autonomy.toml may tighten "
            "how commands are confined, never loosen it (the model's commands can write "
            "that file); to loosen it, name the file with --config (or AUTONOMY_CONFIG), "
            "or use AUTONOMY_SANDBOX / --sandbox"
        )


MAX_CONFIG_BYTES = 1024 * 1024
"""The largest config file read: no settings need more, and a workspace's file larger
than a snapshot records (64 MiB, padded with comments) was one whose writer the log
could not say, taken for the user's."""


def read_config(path: Path) -> Settings:
    """Settings from one TOML file laid over the defaults (no environment)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB, which no autonomy config "
                "is; not read"
            )
        raw = tomllib.loads(data.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # TOML is UTF-8 text
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except RecursionError:  # tomllib parses nested arrays and tables by recursion
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from e
    try:
        return _checked(settings_from_mapping(raw))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e.__cause__


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Settings from a parsed config table (what ``tomllib`` gives). Each role
    under ``models`` is laid over that role's defaults (``roles_from_mapping``)."""
    rest = {k: v for k, v in data.items() if k != "models"}
    try:
        settings = msgspec.convert(rest, Settings)
    except msgspec.ValidationError as e:
        raise ConfigError(describe(e, Settings)) from e
    if "models" not in data:
        return settings
    models = data["models"]
    if not isinstance(models, Mapping):
        raise ConfigError(f"models: expected a table, got {type(models).__name__}")
    try:
        roles = roles_from_mapping(models)
    except ConfigError as e:
        if isinstance(e.__cause__, msgspec.ValidationError):
            raise ConfigError(describe(e.__cause__, Roles, prefix="models")) from e.__cause__
        raise
    return msgspec.structs.replace(settings, models=roles)


def _checked(settings: Settings) -> Settings:
    """``settings``, once every model server's URL is one a request can go to
    (``url_problem``): the settings a run is started or resumed with. A log's
    recorded settings (``recorded_settings``) are not checked: a replay asks no
    server, and a log is replayed whatever it holds."""
    for role in ROLE_NAMES:
        config = getattr(settings.models, role)
        for i, endpoint in enumerate(config.endpoints()):
            key = f"models.{role}." + (f"fallbacks[{i - 1}]." if i else "")
            if problem := url_problem(endpoint.base_url):
                raise ConfigError(f"{key}base_url: {problem}")
            if not endpoint.model.strip():  # every request would name no model
                raise ConfigError(f"{key}model: empty; name the model the server serves")
            if any(c < " " or c == "\x7f" for c in endpoint.model):  # a NUL was sent
                raise ConfigError(
                    f"{key}model: {endpoint.model!r} holds a control character, which no "
                    "model's name does"
                )
    return settings


def _shown(url: str) -> str:
    """``url`` for a message: a user name and password in it as ``***``."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a model server's address, or None: it must be
    http or https, name a host, have a port that is a number, and carry no user name
    or password (which the log would keep in plain text, in every ``run.started``)."""
    if any(c.isspace() for c in url):  # urlsplit keeps it; the connection then failed
        return f"{url!r} holds a space or a line break, which no URL does"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as e:
        return f"{url!r} is not a URL ({e})"
    if parts.username is not None or parts.password is not None:
        return (
            "the URL carries a user name or password, which every run's log would keep "
            "in plain text; give the server's URL without them (a key the server asks "
            "for goes in ~/.config/autonomy/servers.toml: see the README)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not a server's URL; expected http://HOST:PORT or https://HOST"
    return None


RECORDED_BEFORE: Mapping[str, Any] = {"max_answer_tokens": 0}
"""What a role's settings meant before a key existed, for a run recorded then:
no answer cap. A key whose default would change an old run's requests belongs here."""

LIMITS_RECORDED_BEFORE: Mapping[str, Any] = {"max_calls_per_answer": 2**62}
"""The same for ``[limits]``: before the cap on calls per answer, every call of an
answer ran, and a replay of such a run runs them all again."""


CONFINEMENT_KEYS = ("sandbox", "network", "limits")
"""The ``[tools]`` keys that protect the machine commands run on. A log says what a
run was allowed, not what this machine allows: ``recorded_settings`` takes from them
only what is tighter than the defaults, so a log (shared, or edited) that says
``sandbox = "off"``, the network allowed or no limits gets none of that from a
replay, a resume or a worker here. The rest comes from the settings given now
(config file, environment, flags), else the defaults."""


def recorded_settings(config: Mapping[str, Any], here: ToolSettings | None = None) -> Settings:
    """The settings a run recorded (``run.started`` or ``run.resumed`` ``config``),
    with of its confinement (``CONFINEMENT_KEYS``) only what tightens today's defaults,
    or ``here``'s (the confinement this machine's person gave now: a replay's
    ``--config`` and ``--sandbox``, which it took for flags and then ignored).

    A key added since the run was recorded takes the value that reproduces what the
    run did then (``RECORDED_BEFORE``, ``LIMITS_RECORDED_BEFORE``), not today's
    default: a replay, a resume or a worker taking the run up sends the requests that
    run sends, and runs the calls it ran."""
    recorded = config.get("models")
    models = dict(recorded) if isinstance(recorded, Mapping) else {}
    for role in ROLE_NAMES:
        table = models.get(role, {})
        if isinstance(table, Mapping):
            models[role] = {**RECORDED_BEFORE, **table}
    layered: dict[str, Any] = {**config, "models": models}
    limits = config.get("limits")
    if isinstance(limits, Mapping):
        layered["limits"] = {**LIMITS_RECORDED_BEFORE, **limits}
    tools = config.get("tools")
    given = (
        {} if here is None else {k: msgspec.to_builtins(getattr(here, k)) for k in CONFINEMENT_KEYS}
    )
    if isinstance(tools, Mapping):
        kept = {k: v for k, v in tools.items() if k not in CONFINEMENT_KEYS}
        layered["tools"] = {**kept, **given, **_tighter(tools, here or ToolSettings())}
    elif given:
        layered["tools"] = given
    return settings_from_mapping(layered)


def _tighter(recorded: Mapping[str, Any], default: ToolSettings) -> dict[str, Any]:
    """What of a run's recorded confinement is tighter than ``default`` (today's
    defaults, or what was given here): a stronger sandbox, no network where it is
    allowed, each smaller limit. A log may tighten how commands run here, never
    loosen it; and a live replay of a run recorded under a 2-second CPU limit ran its
    commands under 600 s, so a test the limit had killed passed (a divergence in a
    run nobody changed)."""
    tighter: dict[str, Any] = {}
    if recorded.get("network") is False and default.network:
        tighter["network"] = False
    sandbox = recorded.get("sandbox")
    if sandbox in _SANDBOX_STRENGTH and (
        _SANDBOX_STRENGTH[sandbox] > _SANDBOX_STRENGTH[default.sandbox]
    ):
        tighter["sandbox"] = sandbox
    limits = recorded.get("limits")
    if isinstance(limits, Mapping):
        smaller = {}
        for name in default.limits.__struct_fields__:
            value, limit = limits.get(name), getattr(default.limits, name)
            if type(value) is int and value > 0 and (limit == 0 or value < limit):
                smaller[name] = value
        if smaller:  # the others as ``default`` has them
            tighter["limits"] = {**msgspec.to_builtins(default.limits), **smaller}
    return tighter


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    layered: dict[str, Any] = {}
    switch = env.get("USE_ORCHESTRATION", "").strip().lower()
    if switch:
        if switch not in ("true", "false", "1", "0"):
            raise ConfigError(
                f"USE_ORCHESTRATION={env['USE_ORCHESTRATION']!r}: expected true or false"
            )
        layered["mode"] = "orchestrated" if switch in ("true", "1") else "rules"
    for var, key in ENV_VARS.items():
        value = env.get(var, "").strip()
        if value and unicode_text(value) is not value:  # a byte that is not UTF-8
            raise ConfigError(f"{var}='{unicode_text(value)}': not UTF-8 text")
        if value:  # an empty variable counts as unset, as in click
            layered[key] = _convert(value, key, var)
    return layered


def _convert(value: Any, key: str, name: str) -> Any:
    """``value`` as the type of override ``key``; errors name ``name`` (the
    variable or flag it came from)."""
    try:
        converted = msgspec.convert(value, _OVERRIDE_TYPES[key], strict=False)
    except msgspec.ValidationError as e:
        node = msgspec.inspect.type_info(_OVERRIDE_TYPES[key])
        raise ConfigError(f"{name}={value!r}: {_reworded(str(e), node)}") from e
    if key == "model_url" and (problem := url_problem(converted)):
        raise ConfigError(f"{name}={_shown(converted)!r}: {problem}")
    return converted


def _apply(settings: Settings, layered: Mapping[str, Any]) -> Settings:
    replace = msgspec.structs.replace
    if "mode" in layered:
        settings = replace(settings, mode=layered["mode"])
    if "max_steps" in layered:
        settings = replace(
            settings, limits=replace(settings.limits, max_steps=layered["max_steps"])
        )
    if "sandbox" in layered:
        settings = replace(settings, tools=replace(settings.tools, sandbox=layered["sandbox"]))
    if "preflight" in layered:
        settings = replace(settings, preflight=layered["preflight"])
    if any(k in layered for k in ("model_url", "api", "model")):
        roles = point_all_roles(
            settings.models,
            base_url=layered.get("model_url"),
            api=layered.get("api"),
            model=layered.get("model"),
        )
        settings = replace(settings, models=roles)
    return settings


def point_all_roles(
    roles: Roles,
    *,
    base_url: str | None = None,
    api: Api | None = None,
    model: str | None = None,
) -> Roles:
    """Every role on one server (``base_url``, ``api``) and/or one ``model``, with
    no fallbacks: what ``--model-url``, ``--api`` and ``--model`` do. A None
    argument keeps each role's own value."""
    changes: dict[str, Any] = {"fallbacks": ()}
    if base_url is not None:
        changes["base_url"] = base_url
    if api is not None:
        changes["api"] = api
    if model is not None:
        changes["model"] = model
    replace = msgspec.structs.replace
    return Roles(
        arbiter=replace(roles.arbiter, **changes),
        coding=replace(roles.coding, **changes),
        reasoning=replace(roles.reasoning, **changes),
        analysis=replace(roles.analysis, **changes),
    )


# -- error messages ----------------------------------------------------------------------

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")


def describe(error: msgspec.ValidationError, root: type, *, prefix: str = "") -> str:
    """A msgspec validation error as the config file would say it:
    ``limits.max_stepz: unknown key; did you mean max_steps?``."""
    match = _AT.match(str(error))
    assert match is not None  # the pattern matches any text
    what, path = match["what"], (match["path"] or "")
    path = f"{prefix}{path}" if prefix else path.lstrip(".")
    unknown = _UNKNOWN.match(what)
    if unknown is None:
        node = _node_at(root, path[len(prefix) :] if prefix else path)
        return f"{path or '(top level)'}: {_reworded(what, node)}"
    key = unknown["key"]
    known = _known_keys(root, path[len(prefix) :] if prefix else path)
    hint = ""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        hint = f"; did you mean {close[0]}?"
    elif known:
        hint = f"; the keys here are {', '.join(known)}"
    return f"{f'{path}.' if path else ''}{key}: unknown key{hint}"


def _lower(text: str) -> str:
    return text[:1].lower() + text[1:]


def _node_at(root: Any, path: str) -> Any:
    """The ``msgspec.inspect`` type at ``path`` (``limits``, ``models.coding``,
    ``models.coding.fallbacks[0]``) under ``root``, or None."""
    node: Any = msgspec.inspect.type_info(root)
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            node = getattr(node, "item_type", None)
        elif isinstance(node, msgspec.inspect.StructType):
            node = next((f.type for f in node.fields if f.encode_name == part), None)
        else:
            return None
    return node


def _known_keys(root: type, path: str) -> list[str]:
    node = _node_at(root, path)
    if isinstance(node, msgspec.inspect.StructType):
        return [f.encode_name for f in node.fields]
    return []


def _reworded(what: str, node: Any) -> str:
    """msgspec's wording of one problem, in the words of a config file."""
    if what.startswith("Expected `object`"):
        return "expected a table"
    invalid = re.match(r"Invalid enum value (?P<value>.*)$", what)
    if invalid and isinstance(node, msgspec.inspect.LiteralType):
        choices = ", ".join(repr(v) for v in node.values)
        return f"expected one of {choices}, got {invalid['value']}"
    # TOML has no null: a key that may be unset takes the type it has when set
    return _lower(what.replace(" | null`", "`"))


# -- writing -----------------------------------------------------------------------------


def dump_toml(settings: Settings) -> str:
    """``settings`` as an ``autonomy.toml`` that ``read_config`` reads back equal."""
    data = msgspec.to_builtins(settings)
    lines: list[str] = []
    _dump_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping) and v is not None}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if path and scalars:
        lines.append(f"\n[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters (DEL too,
    which TOML forbids raw but JSON allows) escaped."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


__all__ = [
    "CONFIG_FILE",
    "ENV_VARS",
    "Limits",
    "Mode",
    "Settings",
    "Synchronous",
    "ToolSettings",
    "describe",
    "dump_toml",
    "load_settings",
    "locate_config",
    "point_all_roles",
    "read_config",
    "recorded_settings",
    "settings_from_mapping",
]
