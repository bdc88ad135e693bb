"""run_command: allowlist, no shell, working directory, timeout and output cap."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.tools import ToolContext, ToolOutcome, default_registry, execute
from engine.tools.commands import allowed
from events import MemoryEventStore

PYTHON_C = (("python", "-c"),)


def run(workspace: Path, argv: Any, **ctx: Any) -> ToolOutcome:
    context = ToolContext(workspace=workspace, blobs=MemoryEventStore(), **ctx)
    return execute(default_registry(), "run_command", {"argv": argv}, context)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["python", "-m", "pytest"], True),
        (["python", "-m", "pytest", "-q", "tests"], True),
        (["python3", "-m", "py_compile", "a.py"], True),
        (["python", "-m"], False),
        (["python", "-m", "pip", "install", "x"], False),
        (["python", "-c", "print(1)"], False),
        (["pytest"], False),
        (["rm", "-rf", "/"], False),
        ([], False),
    ],
)
def test_the_default_allowlist_matches_prefixes(argv: list[str], expected: bool) -> None:
    assert allowed(argv, (("python", "-m", "pytest"), ("python", "-m", "py_compile"))) is expected


def test_an_allowlist_from_config_may_hold_lists() -> None:
    assert allowed(["make", "test"], (["make", "test"],))  # type: ignore[arg-type]


def test_a_command_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    outcome = run(tmp_path, ["rm", "-rf", "."])
    assert not outcome.ok
    assert "command not allowed: rm -rf ." in outcome.error
    assert "python -m pytest" in outcome.error


def test_an_allowed_command_runs_in_the_workspace_with_our_python(tmp_path: Path) -> None:
    code = "import os, sys; print(os.getcwd()); print(sys.executable)"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C)
    assert outcome.ok, outcome.error
    lines = outcome.result.splitlines()
    assert lines[1] == str(tmp_path.resolve())
    assert lines[2] == sys.executable
    assert "[exit code 0" in outcome.result


def test_py_compile_is_allowed_by_default_and_reports_failures(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("x = (\n")
    assert run(tmp_path, ["python", "-m", "py_compile", "good.py"]).ok
    bad = run(tmp_path, ["python", "-m", "py_compile", "bad.py"])
    assert not bad.ok and bad.error.startswith("exit code 1")
    assert "bad.py" in bad.result  # the output goes back to the model


def test_a_non_zero_exit_is_a_failure_with_the_output(tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C)
    assert not outcome.ok and outcome.error.startswith("exit code 3")
    assert "out" in outcome.result and "err" in outcome.result
    assert outcome.text.startswith("error: exit code 3")


def test_there_is_no_shell(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("still here\n")
    code = "import sys; print(sys.argv[1:])"
    tricky = ["; rm -rf keep.txt", "$(touch pwned)", "`touch pwned2`", "| cat", "&& echo hi"]
    outcome = run(tmp_path, ["python", "-c", code, *tricky], allowlist=PYTHON_C)
    assert outcome.ok
    assert repr(tricky) in outcome.result  # every argument arrived literally
    assert (tmp_path / "keep.txt").read_text() == "still here\n"
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_a_command_line_string_is_split_but_not_given_to_a_shell(tmp_path: Path) -> None:
    outcome = run(
        tmp_path, "python -c 'import sys; print(sys.argv[1:])' '; rm -rf x'", allowlist=PYTHON_C
    )
    assert outcome.ok and "['; rm -rf x']" in outcome.result
    refused = run(tmp_path, "rm -rf x; python -m pytest")
    assert not refused.ok and "not allowed" in refused.error


def test_a_command_that_runs_too_long_is_stopped(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(30)"
    started = time.monotonic()
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C, command_timeout=0.5)
    assert time.monotonic() - started < 10
    assert not outcome.ok and "timed out after 0.5s" in outcome.error
    assert "started" in outcome.result  # what it printed before is kept


def test_the_model_may_shorten_but_not_lengthen_the_timeout(tmp_path: Path) -> None:
    context = ToolContext(
        workspace=tmp_path, blobs=MemoryEventStore(), allowlist=PYTHON_C, command_timeout=0.5
    )
    argv = ["python", "-c", "import time; time.sleep(30)"]
    started = time.monotonic()
    outcome = execute(
        default_registry(), "run_command", {"argv": argv, "timeout_seconds": 600}, context
    )
    assert "timed out after 0.5s" in outcome.error
    assert time.monotonic() - started < 10


def test_output_is_capped_keeping_head_and_tail(tmp_path: Path) -> None:
    code = "print('HEAD' + 'x' * 100000 + 'TAIL')"
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C, output_cap=1000)
    assert outcome.ok
    assert len(outcome.result) < 1300
    assert "HEAD" in outcome.result and "TAIL" in outcome.result
    assert "bytes of output omitted" in outcome.result


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="process groups are POSIX")
def test_a_timeout_also_stops_what_the_command_started(tmp_path: Path) -> None:
    # The child starts a grandchild that marks itself started, then would write a
    # second file after the timeout has passed; killing the group must prevent that.
    grandchild = (
        "import time, pathlib; pathlib.Path('started.txt').write_text('x'); "
        "time.sleep(1.5); pathlib.Path('late.txt').write_text('x')"
    )
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(30)"
    )
    began = time.monotonic()
    outcome = run(tmp_path, ["python", "-c", code], allowlist=PYTHON_C, command_timeout=1.0)
    assert "timed out" in outcome.error
    assert (tmp_path / "started.txt").exists()
    time.sleep(max(0.0, 2.2 - (time.monotonic() - began)))
    assert not (tmp_path / "late.txt").exists()
