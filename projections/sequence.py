"""A persistent append-only sequence, so that folds stay pure *and* linear.

Folds return new states instead of mutating old ones. Copying a tuple to append one
item would make a fold of n events O(n^2); ``Appended`` shares one list between all
versions of a sequence and appends in place when it can (the common case: each
state is extended once). Appending to an older version copies its prefix, so no
version ever sees an item it did not append.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")


class Appended(Generic[T]):
    """An immutable sequence with amortised O(1) ``append`` returning a new sequence."""

    __slots__ = ("_items", "_length")

    def __init__(self, items: list[T] | None = None, length: int | None = None) -> None:
        self._items: list[T] = items if items is not None else []
        self._length = len(self._items) if length is None else length

    def append(self, item: T) -> Appended[T]:
        if len(self._items) == self._length:
            self._items.append(item)
            return Appended(self._items, self._length + 1)
        items = self._items[: self._length]
        items.append(item)
        return Appended(items)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[T]:
        items = self._items
        for i in range(self._length):
            yield items[i]

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return self._items[: self._length][index]
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError(index)
        return self._items[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Appended):
            return NotImplemented
        if self._length != other._length:
            return False
        if self._items is other._items:
            return True
        return self._items[: self._length] == other._items[: other._length]

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Appended({self._items[: self._length]!r})"


K = TypeVar("K")
V = TypeVar("V")


class FirstSeen(Generic[K, V]):
    """An immutable map where a key keeps the first value given to it.

    Like ``Appended``, versions share one dict; each entry remembers when it was
    added, and a version sees only the entries added before it was made.
    """

    __slots__ = ("_entries", "_length")

    def __init__(self, entries: dict[K, tuple[int, V]] | None = None, length: int = 0) -> None:
        self._entries: dict[K, tuple[int, V]] = entries if entries is not None else {}
        self._length = length

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] >= self._length:
            return None
        return entry[1]

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(key)  # type: ignore[arg-type]
        return entry is not None and entry[0] < self._length

    def with_first(self, key: K, value: V) -> FirstSeen[K, V]:
        """This map plus ``key -> value`` unless ``key`` is already present."""
        if key in self:
            return self
        if len(self._entries) == self._length and key not in self._entries:
            self._entries[key] = (self._length, value)
            return FirstSeen(self._entries, self._length + 1)
        entries = {k: e for k, e in self._entries.items() if e[0] < self._length}
        entries[key] = (self._length, value)
        return FirstSeen(entries, self._length + 1)

    def __len__(self) -> int:
        return self._length

    def items(self) -> list[tuple[K, V]]:
        return [(k, e[1]) for k, e in self._entries.items() if e[0] < self._length]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FirstSeen):
            return NotImplemented
        return self._length == other._length and self.items() == other.items()

    def __hash__(self) -> int:
        return hash(tuple(self.items()))

    def __repr__(self) -> str:
        return f"FirstSeen({dict(self.items())!r})"
