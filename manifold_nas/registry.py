"""timm-style registries: register by name, list with wildcards, build by name.

One :class:`Registry` instance exists per kind of pluggable thing (op sets,
relaxations, architecture optimizers, selectors, datasets, networks). Third
parties add to a registry either by importing it and calling
:meth:`Registry.register`, or, without touching our code, through a Python
entry point in the group ``manifold_nas.<kind>`` (e.g. ``manifold_nas.opsets``),
whose names are read the first time the registry is queried and whose objects
are imported only when :meth:`Registry.get` asks for one.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from manifold_nas.errors import UserInputError

LOGGER = logging.getLogger("manifold_nas")

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with entry-point discovery.

    Parameters
    ----------
    kind:
        Plural noun used in messages and in ``manifold-nas list KIND``.
    entry_point_group:
        Entry-point group scanned once, lazily, for its names only. An entry
        point's object is imported the first time :meth:`get` asks for it (its
        module may register the object itself), so listing or checking a
        name imports nothing.
    """

    def __init__(
        self, kind: str, entry_point_group: str | None = None, singular: str | None = None
    ) -> None:
        self.kind = kind
        self.singular = singular or kind[:-1]
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        # entry points found but not loaded yet: a name costs nothing until it is used
        self._pending: dict[str, EntryPoint] = {}
        self._scanned = entry_point_group is None

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` act as a decorator."""

        def _add(value: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not value:
                raise ValueError(f"{self.singular} {name!r} is already registered")
            self._items[name] = value
            self._pending.pop(name, None)
            return value

        if obj is not None:
            return _add(obj)
        return _add

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what was registered under it."""
        obj = self.get(name)
        self._items.pop(name, None)
        return obj

    @contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` as ``name`` for the duration of a ``with`` block."""
        self._scan()
        previous = self._items.get(name)
        pending = self._pending.get(name)
        self.register(name, obj, overwrite=True)
        try:
            yield obj
        finally:
            self._items.pop(name, None)
            if previous is not None:
                self._items[name] = previous
            if pending is not None:
                self._pending[name] = pending

    def reload_entry_points(self) -> None:
        """Scan the entry-point group again (after installing a plugin at run time)."""
        self._scanned = self.entry_point_group is None
        self._scan()

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._pending[ep.name] = ep

    def _load(self, name: str) -> T:
        """Import the entry point ``name``; its module may register the object itself."""
        ep = self._pending[name]
        try:
            loaded = ep.load()
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserInputError(
                f"{self.singular} {name!r} (entry point {ep.value}) failed to load: {first}"
            ) from None
        self._pending.pop(name, None)
        return self._items.setdefault(name, loaded)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` (loading its entry point) or raise a one-line error."""
        self._scan()
        if name in self._items:
            return self._items[name]
        if name in self._pending:
            return self._load(name)
        known = ", ".join(self.list()) or "none"
        raise UserInputError(f"unknown {self.singular} {name!r}; registered {self.kind}: {known}")

    def __contains__(self, name: str) -> bool:
        self._scan()
        return name in self._items or name in self._pending

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted (nothing is imported)."""
        self._scan()
        names = set(self._items) | set(self._pending)
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        """Every ``(name, object)``, loading all entry points; a broken plugin is skipped with a warning."""
        self._scan()
        for name in list(self._pending):
            try:
                self.get(name)
            except UserInputError as err:  # a broken plugin must not take the others down
                LOGGER.warning("skipping %s", err)
                self._pending.pop(name, None)
        return sorted(self._items.items())
