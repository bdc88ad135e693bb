"""How many times a large file written by the agent is stored in the log.

    python benchmarks/bench_log_size.py              # a 20 MB create_file
    python benchmarks/bench_log_size.py --mb 5

The demo run (``engine.runs.demo``) twice against the scripted model server: once as is
(the baseline), once with ``--mb`` megabytes of comment appended to the ``calc.py``
the model creates. The extra bytes in the log file over the baseline, divided by the
size of the content, say how many times the content was stored: ideally once (the
blob), whatever carries it (the model's answer, ``tool.requested``, the next request's
assistant message). Sizes are of the database file after a checkpoint. This is a
script, not a test.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

import msgspec

from engine.agent.runner import start_run
from engine.config import Settings, load_settings
from engine.runs.demo import CALC_V1, GOAL, DemoModels
from engine.storage import open_store
from engine.testing import Reply, ScriptedModelServer, ScriptedRequest


class BigFile(DemoModels):
    """The demo models, except that calc.py is first created with ``size`` bytes of
    comment (once: the request after it no longer fits the context, so the model,
    not seeing that it created the file, creates it again, small)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.content = CALC_V1 + "# " + "x" * max(0, size - len(CALC_V1) - 3) + "\n"
        self.sent = False

    def __call__(self, request: ScriptedRequest) -> Reply:
        reply = super().__call__(request)
        for name, args in reply.tool_calls:
            calc = isinstance(args, dict) and args.get("path") == "calc.py"
            if name == "create_file" and calc and not self.sent:
                self.sent = True
                return Reply.tool("create_file", path="calc.py", content=self.content)
        return reply


def settings_for(url: str, cap: int) -> Settings:
    settings = load_settings(env={}, overrides={"model_url": url, "api": "ollama", "model": "m"})
    roles = settings.models
    if "max_response_bytes" in msgspec.structs.asdict(roles.coding):
        replace = msgspec.structs.replace
        roles = replace(
            roles,
            **{
                name: replace(getattr(roles, name), max_response_bytes=cap)
                for name in ("arbiter", "coding", "reasoning", "analysis")
            },
        )
    return msgspec.structs.replace(settings, models=roles)


def log_size(models: DemoModels, base: Path, cap: int) -> tuple[int, int, int]:
    """The database file's size, the bytes of event payloads and of blobs."""
    db = base / "events.db"
    with ScriptedModelServer(models, models=["m"]) as server:
        store = open_store(db)
        try:
            start_run(
                store,
                goal=GOAL,
                workspace=base / "ws",
                settings=settings_for(server.url, cap),
                run_id="size",
            )
        finally:
            store.close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        status = conn.execute(
            "SELECT json_extract(data, '$.status') FROM events WHERE type = 'run.finished'"
        ).fetchone()
        inline = conn.execute("SELECT sum(length(data)) FROM events").fetchone()[0]
        blobs = conn.execute("SELECT coalesce(sum(size), 0) FROM blobs").fetchone()[0]
    assert status is not None and status[0] == "completed", status
    return db.stat().st_size, inline, blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="Size of the file, in MB.")
    options = parser.parse_args()
    size = int(options.mb * 1_000_000)
    cap = 4 * size + 1_000_000  # an answer carries the content JSON-escaped, plus the rest
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        baseline = log_size(DemoModels(), Path(one), cap)
        big = log_size(BigFile(size), Path(two), cap)
    print(f"content of the file: {size / 1e6:.1f} MB")
    print(f"{'':22}{'file':>10}{'events':>10}{'blobs':>10}  (MB)")
    for label, sizes in (("demo run as is", baseline), (f"with the {options.mb:g} MB file", big)):
        print(f"{label:22}" + "".join(f"{n / 1e6:10.1f}" for n in sizes))
    extra_file, extra_events, extra_blobs = (b - a for a, b in zip(baseline, big, strict=True))
    print(
        f"the file's content is in the event payloads {extra_events / size:.2f} times and in "
        f"blobs {extra_blobs / size:.2f} times (the file's versions); the log grew "
        f"{extra_file / size:.2f} times its size"
    )


if __name__ == "__main__":
    main()
