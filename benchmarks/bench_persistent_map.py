"""Our persistent map (``projections.sequence.PersistentMap``) against the libraries.

    pip install -e '.[bench]'          # immutables and pyrsistent
    python benchmarks/bench_persistent_map.py                 # --events 20000 --repeat 5

Issue 15 asked whether ``projections/sequence.py`` (a hand-made persistent map)
should give way to ``immutables.Map`` (the C HAMT behind ``contextvars``) or
``pyrsistent.pmap``. Measured in one process, median of ``--repeat``:

1. **Rebuild**: ``project`` of one realistic run of ``--events`` events (the same
   generator as ``bench_store.py``) from a memory store — a fold at once, which
   builds plain dicts and freezes them once.
2. **Event by event**: ``apply`` of each event of that run in turn, keeping every
   state — what a live run and a replay do (one persistent update per event).
3. **Raw map operations**: ``set`` of 20,000 new keys one version at a time, then
   a ``get`` of each key on the last version.

For (1) and (2) the fold's map type is swapped: ``PersistentMap`` in
``projections.sequence`` is replaced by a thin class with the same methods over the
library's map (the fold calls ``set``, ``delete``, ``adopt``, ``to_dict`` and the
``Mapping`` methods). Ratios are library / ours: above 1.00x the library is slower.
Each row also says in which order the map iterates: a state's maps feed prompts
(the tasks, the files), so a map that iterates in hash order (string hashes differ
between processes) would build different prompts for a run and its replay.

This is a script, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for where in (ROOT, ROOT / "benchmarks"):
    if str(where) not in sys.path:
        sys.path.insert(0, str(where))

from bench_store import realistic_events  # noqa: E402

import projections.sequence as sequence  # noqa: E402
from events import MemoryEventStore  # noqa: E402
from projections.fold import EMPTY, apply, project  # noqa: E402

OURS = sequence.PersistentMap


def adapter(make: Callable[[Any], Any], name: str) -> type:
    """A class with ``PersistentMap``'s methods over a library's persistent map."""

    class Adapted(Mapping[Any, Any]):
        __slots__ = ("_m",)

        def __init__(self, items: Any = ()) -> None:
            self._m = make(dict(items))

        @classmethod
        def _wrap(cls, m: Any) -> Adapted:
            new = object.__new__(cls)
            new._m = m
            return new

        @classmethod
        def adopt(cls, items: dict[Any, Any]) -> Adapted:
            return cls._wrap(make(items))

        def set(self, key: Any, value: Any) -> Adapted:
            return self._wrap(self._m.set(key, value))

        def delete(self, key: Any) -> Adapted:
            return self._wrap(
                self._m.delete(key) if hasattr(self._m, "delete") else self._m.remove(key)
            )

        def update(self, items: Any) -> Adapted:
            m = self._m
            for k, v in dict(items).items():
                m = m.set(k, v)
            return self._wrap(m)

        def to_dict(self) -> dict[Any, Any]:
            return dict(self._m.items())

        def __getitem__(self, key: Any) -> Any:
            return self._m[key]

        def get(self, key: Any, default: Any = None) -> Any:
            return self._m.get(key, default)

        def __contains__(self, key: object) -> bool:
            return key in self._m

        def __iter__(self) -> Iterator[Any]:
            return iter(self._m)

        def __len__(self) -> int:
            return len(self._m)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

        __hash__ = None  # type: ignore[assignment]

    Adapted.__name__ = name
    return Adapted


def libraries() -> dict[str, type]:
    found: dict[str, type] = {"ours (PersistentMap)": OURS}
    try:
        import immutables

        found["immutables.Map"] = adapter(immutables.Map, "ImmutablesMap")
    except ImportError:
        print("immutables not installed (pip install -e '.[bench]'): skipped")
    try:
        import pyrsistent

        found["pyrsistent.pmap"] = adapter(pyrsistent.pmap, "PyrsistentMap")
    except ImportError:
        print("pyrsistent not installed (pip install -e '.[bench]'): skipped")
    return found


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    store = MemoryEventStore()
    events = realistic_events(args.events)
    store.append("r", events, expected_version=0)
    recorded = list(store.read("r"))
    keys = [f"k{n}" for n in range(20_000)]

    def rebuild() -> None:
        project(store, "r")

    def one_by_one() -> None:
        state = EMPTY
        for event in recorded:
            state = apply(state, event)

    def raw(kind: type) -> Callable[[], None]:
        def run() -> None:
            m = kind()
            for k in keys:
                m = m.set(k, 1)
            for k in keys:
                m[k]

        return run

    kinds = libraries()
    tests = {
        "rebuild": lambda kind: rebuild,
        "event by event": lambda kind: one_by_one,
        "raw set+get": raw,
    }
    times: dict[str, dict[str, list[float]]] = {n: {t: [] for t in tests} for n in kinds}
    for _ in range(args.repeat):  # in turns, so a busy moment falls on every map alike
        for name, kind in kinds.items():
            sequence.PersistentMap = kind  # type: ignore[misc]
            try:
                for test, make in tests.items():
                    times[name][test].append(median_seconds(make(kind), 1))
            finally:
                sequence.PersistentMap = OURS  # type: ignore[misc]
    results = {n: {t: statistics.median(v) for t, v in row.items()} for n, row in times.items()}

    row_order: dict[str, str] = {}
    ours = results["ours (PersistentMap)"]
    print(f"{len(recorded):,} events, median of {args.repeat}; ms (ratio to ours)")
    columns = list(ours)
    print(f"{'map':<22}" + "".join(f"{c:>24}" for c in columns))
    for name, row in results.items():
        kind = kinds[name]
        m = kind()
        for k in keys[:50]:
            m = m.set(k, 1)
        order = "insertion" if list(m) == keys[:50] else "hash (varies by process)"
        row_order[name] = order
        cells = "".join(f"{row[c] * 1000:>14.1f} ({row[c] / ours[c]:>5.2f}x)" for c in columns)
        print(f"{name:<22}{cells}   iterates in {order} order")


if __name__ == "__main__":
    main()
