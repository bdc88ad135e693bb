"""What streaming costs: a streamed answer against the same answer whole.

    python benchmarks/bench_streaming.py                  # 2,000-word answers, 15 repetitions
    python benchmarks/bench_streaming.py --words 500 --repeat 31

For each wire format, ``ScriptedModelServer`` (in this process, on loopback) gives the
same text answer streamed (Ollama's NDJSON, OpenAI's server-sent events: one piece a
word, as a model sends one a token) and whole. Two measures, medians, each with the
streamed/whole ratio measured in the same run:

- call: ``ModelClient.chat`` over loopback, the scripted server's writes included (it
  shares this process), and the bytes of the answer on the wire;
- parse: the client's own share, the body already received (``parse_stream`` on its
  lines against ``parse_chat`` on the whole body), and its cost per piece.

A local model writes tens of tokens a second; the per-piece cost says what a live token
count takes from that. Not part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from engine.model import Endpoint, ModelClient  # noqa: E402
from engine.model.client import _lines  # noqa: E402
from engine.model.wire import parse_chat, parse_stream  # noqa: E402
from engine.testing import Reply, ScriptedModelServer  # noqa: E402
from events.schema import Message  # noqa: E402

ASK = [Message(role="user", content="write a long answer")]
PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}


def median(repeat: int, work: Callable[[], Any]) -> float:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def body(server: ScriptedModelServer, api: str, stream: bool) -> bytes:
    """One answer as the server sends it."""
    request: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    if stream:
        request.update(stream=True, stream_options={"include_usage": True})
    elif api == "ollama":
        request["stream"] = False
    return httpx.post(server.url + PATHS[api], json=request).content


def call(
    server: ScriptedModelServer, http: httpx.Client, api: str, stream: bool, repeat: int
) -> float:
    client = ModelClient(http, stream=stream, identify_models=False)
    endpoint = Endpoint(base_url=server.url, model="m", api=api)  # type: ignore[arg-type]
    client.chat(endpoint, ASK)  # warm: the connection, the first parse
    return median(repeat, lambda: client.chat(endpoint, ASK))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    text = " ".join(f"word{i}" for i in range(args.words))
    print(f"{args.words}-word answers, medians of {args.repeat}")
    print(f"{'format':<7} {'mode':<9} {'call ms':>9} {'wire bytes':>11} {'parse ms':>9}")
    with (
        ScriptedModelServer(lambda r: Reply.text(text), models=["m"]) as server,
        httpx.Client() as http,
    ):
        for api in ("ollama", "openai"):
            rows = {}
            for stream in (False, True):
                wire = body(server, api, stream)
                pieces = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
                if stream:
                    parse = median(args.repeat, lambda: parse_stream(api, _lines(pieces)))  # noqa: B023
                else:
                    parse = median(args.repeat, lambda: parse_chat(api, wire))  # noqa: B023
                rows[stream] = (call(server, http, api, stream, args.repeat), len(wire), parse)
                seconds, size, parsed = rows[stream]
                mode = "streamed" if stream else "whole"
                print(f"{api:<7} {mode:<9} {seconds * 1000:9.1f} {size:11d} {parsed * 1000:9.2f}")
            (cw, bw, pw), (cs, bs, ps) = rows[False], rows[True]
            print(
                f"{api:<7} {'ratio':<9} {cs / cw:8.1f}x {bs / bw:10.1f}x {ps / pw:8.0f}x"
                f"   parse: {ps / args.words * 1e6:.1f} us a piece"
            )


if __name__ == "__main__":
    main()
