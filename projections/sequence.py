"""Persistent collections, so that folds stay pure *and* linear.

Folds return new states instead of mutating old ones. Copying a dict or a tuple to
change one entry would make a fold of n events O(n^2), so the growing parts of a
state use structures whose versions share storage:

- ``Appended``: an immutable sequence. All versions share one list; a version
  appends in place when it is the longest one (the common case: each state is
  extended once) and copies its prefix otherwise, so no version ever sees an
  item it did not append.
- ``PersistentMap``: an immutable map with ``set`` and ``delete``. A version is a
  shared base dict that is never mutated plus a small overlay of the changes made
  since the base was built (deleted keys are tombstones in the overlay). Setting
  a key copies only the overlay; when the overlay outgrows about the square root
  of the base, the two are merged into a new base. A change costs O(sqrt n) in
  the worst case and far less in practice, versions never affect each other, and
  no version is ever mutated, so any version may be read from any thread.

Values worked out from a collection can be remembered on it, as a cache that never
changes a result: ``PersistentMap.derived`` once per version (for a value of all
the items), ``derived_each`` once per item for all the versions that grow from one
(for a value of each item: an item a version did not change is the very same
object in the next, so only the changed ones are worked out again).

Both compare by content; ``PersistentMap`` is a ``collections.abc.Mapping``, so
code written against dicts keeps working. ``MapEditor`` and ``AppendedEditor``
give fold steps dict and list syntax over them (see ``projections.pipeline``).
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    MutableMapping,
    ValuesView,
)
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar, cast, overload

import msgspec

T = TypeVar("T")
U = TypeVar("U")
K = TypeVar("K")
V = TypeVar("V")
T_contra = TypeVar("T_contra", contravariant=True)

_new = object.__new__  # versions are made without __init__: it is the hot path of a fold

_Lineage = dict[Callable[[Any], Any], dict[Any, tuple[Any, Any]]]
"""``derived_each``'s memo, shared by a version and those made from it: by function,
then by key or index, the item it was worked out for (compared by identity, so
that versions with another item there, siblings included, never take its result)
and the result."""


class _HasLineage(Protocol):
    _lineage: _Lineage | None


_BASE: Any = object()  # the key of a map's memo under which its base's results are kept


def _each(
    memo: dict[Any, tuple[Any, Any]], key: Any, value: Any, compute: Callable[[Any], Any]
) -> Any:
    known = memo.get(key)
    if known is None or known[0] is not value:
        known = memo[key] = (value, compute(value))
    return known[1]


def _memo(version: _HasLineage, compute: Callable[[Any], Any]) -> dict[Any, tuple[Any, Any]]:
    # Made on the first non-empty version asked: an empty one may be a default that
    # every state shares, and a memo must not reach from one run's versions to another's.
    lineage = version._lineage
    if lineage is None:
        lineage = version._lineage = {}
    memo = lineage.get(compute)
    if memo is None:
        memo = lineage[compute] = {}
    return memo


class Appended(Generic[T]):
    """An immutable sequence with amortised O(1) ``append`` returning a new sequence."""

    __slots__ = ("_items", "_length", "_lineage")

    _items: list[T]
    _length: int
    _lineage: _Lineage | None
    """What ``derived_each`` worked out, shared with the versions appended to this one."""

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items = list(items)
        self._length = len(self._items)
        self._lineage = None

    @staticmethod
    def adopt(items: list[T]) -> Appended[T]:
        """A sequence over ``items`` itself, not a copy: whoever hands the list over
        must never change it again (this is how a transient builder freezes)."""
        adopted: Appended[T] = _new(Appended)
        adopted._items = items
        adopted._length = len(items)
        adopted._lineage = None
        return adopted

    def to_list(self) -> list[T]:
        """A new list with the same items."""
        return self._items[: self._length]

    def append(self, item: T) -> Appended[T]:
        items = self._items
        length = self._length
        grown: Appended[T] = _new(Appended)
        if length == 0:
            # A fresh list: an empty version (a default, EMPTY) is shared widely
            # and must not keep the first item anyone appended to it.
            grown._items = [item]
        elif len(items) == length:
            items.append(item)
            grown._items = items
        else:
            grown._items = items[:length]
            grown._items.append(item)
        grown._length = length + 1
        grown._lineage = self._lineage
        return grown

    def derived_each(self, compute: Callable[[T], U], start: int = 0) -> list[U]:
        """``[compute(item) for item in self[start:]]``, each ``compute(item)`` worked
        out once for this version and every version appended to it: for values of
        the last few items that are asked for again after each append (an item never
        changes once appended). ``compute`` must depend on the item alone."""
        length = self._length
        first = max(start + length if start < 0 else start, 0)
        if first >= length:
            return []
        memo = _memo(self, compute)
        items = self._items
        out = []
        for index in range(first, length):
            item = items[index]
            known = memo.get(index)
            if known is None or known[0] is not item:
                known = memo[index] = (item, compute(item))
            out.append(known[1])
        return out

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[T]:
        # bounded: a newer version may append to the shared list while this iterates
        return islice(self._items, self._length)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._length)
            if step > 0:  # a slice costs what it holds, not a copy of the whole version
                return self._items[start:stop:step]
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

    def __reduce__(self) -> tuple[Any, ...]:
        # its items only: not a newer version's, nor what derived_each remembered
        return (Appended, (self.to_list(),))


# -- maps ------------------------------------------------------------------------------

_MISSING: Any = object()  # "not in this dict" for dict.get
_DELETED: Any = object()  # a tombstone: the key is deleted in this overlay
_MIN_OVERLAY = 8


class PersistentMap(Mapping[K, V]):
    """An immutable mapping with cheap ``set``/``delete`` returning new versions.

    It iterates in insertion order exactly as a dict built by the same sets and
    deletes would (an updated key keeps its place, a deleted and re-added key
    moves to the end), and equals any mapping with the same items.
    """

    __slots__ = ("_base", "_derived", "_length", "_lineage", "_merged", "_overlay")

    _base: dict[K, V]
    """Never mutated once a version holds it, so versions share it freely."""
    _overlay: dict[K, V]
    """Changes since ``_base``: new values, or ``_DELETED`` for keys of the base."""
    _length: int
    _merged: dict[K, V] | None
    """The base with the overlay applied, made when first read whole (iterated, or
    asked for keys, values or items: a projected state's tasks are listed many
    times per engine step) and never mutated, like the base."""
    _derived: dict[Callable[[Any], Any], Any] | None
    """What ``derived`` worked out for this version, by the function that did."""
    _lineage: _Lineage | None
    """What ``derived_each`` worked out, shared with the versions made from this one."""

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._base = dict(items)
        self._overlay = {}
        self._length = len(self._base)
        self._merged = None
        self._derived = None
        self._lineage = None

    @staticmethod
    def adopt(items: dict[K, V]) -> PersistentMap[K, V]:
        """A map over ``items`` itself, not a copy: whoever hands the dict over must
        never change it again (this is how a transient builder freezes)."""
        return PersistentMap._make(items, {}, len(items), None)

    @staticmethod
    def _make(
        base: dict[K, V], overlay: dict[K, V], length: int, lineage: _Lineage | None
    ) -> PersistentMap[K, V]:
        made: PersistentMap[K, V] = _new(PersistentMap)
        made._base = base
        made._overlay = overlay
        made._length = length
        made._merged = None
        made._derived = None
        made._lineage = lineage
        return made

    def derived(self, compute: Callable[[PersistentMap[K, V]], T]) -> T:
        """``compute(self)``, worked out once for this version: for a value that
        depends on the items alone, as a version's items never change (the ready
        tasks of a state are asked for several times in one engine step)."""
        memo = self._derived
        if memo is None:
            memo = self._derived = {}
        found = memo.get(compute, _MISSING)
        if found is _MISSING:
            found = memo[compute] = compute(self)
        return cast(T, found)

    def derived_each(self, compute: Callable[[V], T]) -> dict[K, T]:
        """``{key: compute(value)}`` for this version, in its order, each
        ``compute(value)`` worked out once for all the versions made from this one
        (a value a version did not change is the same object in the next): for a
        value of each item asked for again after every change. ``compute`` must
        depend on the value alone."""
        if not self._length:
            return {}
        memo = _memo(self, compute)
        base = self._base
        # the base's results are shared by the versions over it, like the base itself;
        # a version's own costs only its overlay
        known = memo.get(_BASE)
        if known is None or known[0] is not base:
            known = memo[_BASE] = (base, {k: _each(memo, k, v, compute) for k, v in base.items()})
        out: dict[K, T] = known[1].copy()
        for key, value in self._overlay.items():
            if value is _DELETED:
                del out[key]
            else:
                out[key] = _each(memo, key, value, compute)
        return out

    # -- new versions ------------------------------------------------------------------

    def set(self, key: K, value: V) -> PersistentMap[K, V]:
        """This map with ``key`` bound to ``value`` (itself if it already was)."""
        base = self._base
        overlay = self._overlay
        old = overlay.get(key, _MISSING)
        if old is _MISSING:
            old = base.get(key, _MISSING)
            if old is value:
                return self
            length = self._length if old is not _MISSING else self._length + 1
        elif old is _DELETED:
            # A key of the base deleted and now added again must move to the end,
            # as in a dict; merging first makes it an ordinary new key.
            return self._merged_version().set(key, value)
        elif old is value:
            return self
        else:
            length = self._length
        changed = overlay.copy()
        changed[key] = value
        if len(changed) > _MIN_OVERLAY and len(changed) * len(changed) > len(base):
            return self._make(_merge(base, changed), {}, length, self._lineage)
        return self._make(base, changed, length, self._lineage)

    def delete(self, key: K) -> PersistentMap[K, V]:
        """This map without ``key`` (itself if ``key`` is absent)."""
        base = self._base
        overlay = self._overlay
        in_overlay = overlay.get(key, _MISSING)
        if in_overlay is _DELETED or (in_overlay is _MISSING and key not in base):
            return self
        changed = overlay.copy()
        if key in base:
            changed[key] = _DELETED
        else:  # added since the base: forgetting it is enough
            del changed[key]
        if len(changed) > _MIN_OVERLAY and len(changed) * len(changed) > len(base):
            return self._make(_merge(base, changed), {}, self._length - 1, self._lineage)
        return self._make(base, changed, self._length - 1, self._lineage)

    def update(self, items: Mapping[K, V] | Iterable[tuple[K, V]]) -> PersistentMap[K, V]:
        """This map with every pair of ``items`` set, in order."""
        pairs = items.items() if isinstance(items, Mapping) else items
        result = self
        for key, value in pairs:
            result = result.set(key, value)
        return result

    def _merged_version(self) -> PersistentMap[K, V]:
        if not self._overlay:
            return self
        return self._make(self._view(), {}, self._length, self._lineage)

    def to_dict(self) -> dict[K, V]:
        """A new plain dict with the same items, in the same order."""
        return self._view().copy()

    # -- Mapping -----------------------------------------------------------------------

    def __getitem__(self, key: K) -> V:
        value = self._overlay.get(key, _MISSING)
        if value is _MISSING:
            return self._base[key]
        if value is _DELETED:
            raise KeyError(key)
        return cast(V, value)

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | T) -> V | T: ...
    def get(self, key: K, /, default: Any = None) -> Any:
        value = self._overlay.get(key, _MISSING)
        if value is _MISSING:
            return self._base.get(key, default)
        return default if value is _DELETED else value

    def __contains__(self, key: object) -> bool:
        value = self._overlay.get(key, _MISSING)  # type: ignore[arg-type]
        if value is _MISSING:
            return key in self._base
        return value is not _DELETED

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[K]:
        return iter(self._view())

    def keys(self) -> KeysView[K]:
        return self._view().keys()

    def items(self) -> ItemsView[K, V]:
        return self._view().items()

    def values(self) -> ValuesView[V]:
        return self._view().values()

    def _view(self) -> dict[K, V]:
        # The base and the merged dict are never mutated, so their views are safe
        # to hand out.
        if not self._overlay:
            return self._base
        merged = self._merged
        if merged is None:
            merged = self._merged = _merge(self._base, self._overlay)
        return merged

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Mapping):
            return NotImplemented
        if self._length != len(other):
            return False
        mine = self._view()
        if isinstance(other, PersistentMap):
            return mine == other._view()
        return mine == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, which are unhashable

    def __repr__(self) -> str:
        return f"PersistentMap({self._view()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PersistentMap, (self.to_dict(),))


def _merge(base: dict[K, V], overlay: dict[K, V]) -> dict[K, V]:
    """A new dict: ``base`` with ``overlay`` applied, in dict insertion order."""
    merged = base.copy()
    for key, value in overlay.items():
        if value is _DELETED:
            del merged[key]
        else:
            merged[key] = value
    return merged


# -- editing: one step on persistent values, with the syntax of dicts and lists ----------


class MapEditor(MutableMapping[K, V]):
    """A dict-like handle on a ``PersistentMap`` whose writes make new versions.

    Fold steps are written once, against dict syntax: a fold of many events runs
    them on plain dicts (copied once, frozen with ``PersistentMap.adopt``), and
    ``apply`` of a single event runs them on editors, so that one event costs a
    persistent update, never a copy of the whole map.
    """

    __slots__ = ("value",)

    value: PersistentMap[K, V]

    def __init__(self, value: Mapping[K, V]) -> None:
        self.value = persistent_map(value)

    def __getitem__(self, key: K) -> V:
        return self.value[key]

    def get(self, key: K, default: Any = None) -> Any:
        return self.value.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.value

    def __setitem__(self, key: K, value: V) -> None:
        self.value = self.value.set(key, value)

    def __delitem__(self, key: K) -> None:
        if key not in self.value:
            raise KeyError(key)
        self.value = self.value.delete(key)

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        found = self.value.get(key, _MISSING)
        if found is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self.value = self.value.delete(key)
        return found

    def __iter__(self) -> Iterator[K]:
        return iter(self.value)

    def __len__(self) -> int:
        return len(self.value)


class AppendedEditor(Generic[T]):
    """A list-like handle on an ``Appended`` whose ``append`` makes a new version."""

    __slots__ = ("value",)

    value: Appended[T]

    def __init__(self, value: Iterable[T]) -> None:
        self.value = value if isinstance(value, Appended) else Appended(value)

    def append(self, item: T) -> None:
        self.value = self.value.append(item)


class Growing(Protocol[T_contra]):
    """What a fold step needs of a sequence field: a list, or an ``AppendedEditor``."""

    def append(self, item: T_contra, /) -> None: ...


def thaw_map(items: Mapping[K, V]) -> dict[K, V]:
    """A new dict with the items of a persistent map (or of any mapping)."""
    return items.to_dict() if isinstance(items, PersistentMap) else dict(items)


def persistent_map(items: Mapping[K, V]) -> PersistentMap[K, V]:
    """``items`` as a persistent map: itself if it is one (a state built by hand may
    hold a plain dict)."""
    return items if type(items) is PersistentMap else PersistentMap(items)


def thaw_sequence(items: Iterable[T]) -> list[T]:
    """A new list with the items of an ``Appended`` (or of any iterable)."""
    return items.to_list() if isinstance(items, Appended) else list(items)


def freeze_map(items: MutableMapping[K, V]) -> PersistentMap[K, V]:
    """The persistent map a step's dict (adopted, so never use it again) or editor holds."""
    if isinstance(items, MapEditor):
        return items.value
    assert type(items) is dict
    return PersistentMap.adopt(items)


def freeze_sequence(items: Growing[T]) -> Appended[T]:
    """The ``Appended`` a step's list (adopted, so never use it again) or editor holds."""
    if isinstance(items, AppendedEditor):
        return cast(Appended[T], items.value)
    assert isinstance(items, list)
    return Appended.adopt(items)


def one_event_builder(
    builder: type[T],
    scalars: Iterable[str],
    collections: Mapping[str, type[MapEditor[Any, Any]] | type[AppendedEditor[Any]]],
) -> type[T]:
    """A subclass of ``builder`` for one event, constructed with the state alone.

    Its fields are properties over the changes the step made, by field name: the
    scalars it set and, for each collection it touched, an editor made at the
    first touch; a field not changed reads the state's. ``freeze`` replaces only
    what changed, so ``apply`` costs nothing for the fields an event leaves alone
    (most events change one or two) and returns the state itself when nothing did.
    """

    def init(self: Any, state: Any) -> None:
        self._base = state
        self._changes = {}

    def freeze(self: Any) -> Any:
        changes = self._changes
        if not changes:
            return self._base
        for name, value in changes.items():
            if name in collections:
                changes[name] = value.value
        return msgspec.structs.replace(self._base, **changes)

    def scalar(name: str) -> property:
        def get(self: Any) -> Any:
            changes = self._changes
            return changes[name] if name in changes else getattr(self._base, name)

        def set_(self: Any, value: Any) -> None:
            self._changes[name] = value

        return property(get, set_)

    def collection(name: str, make: Any) -> property:
        def get(self: Any) -> Any:
            changes = self._changes
            editor = changes.get(name)
            if editor is None:
                editor = changes[name] = make(getattr(self._base, name))
            return editor

        return property(get)

    namespace: dict[str, Any] = {
        "__slots__": ("_base", "_changes"),
        "__init__": init,
        "freeze": freeze,
        "__doc__": f"{builder.__name__} of one event (see ``one_event_builder``).",
    }
    namespace.update((name, scalar(name)) for name in scalars)
    namespace.update((name, collection(name, make)) for name, make in collections.items())
    return type(f"OneEvent{builder.__name__}", (builder,), namespace)
