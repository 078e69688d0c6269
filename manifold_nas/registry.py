"""timm-style registries: register by name, list with wildcards, build by name.

One :class:`Registry` instance exists per kind of pluggable thing (op sets,
relaxations, architecture optimizers, selectors, datasets, networks). Third
parties add to a registry either by importing it and calling
:meth:`Registry.register`, or, without touching our code, through a Python
entry point in the group ``manifold_nas.<kind>`` (e.g. ``manifold_nas.opsets``),
which is loaded lazily the first time the registry is queried.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
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
        Entry-point group scanned once, lazily. Each entry point's object is
        loaded and registered under the entry point's name (unless loading
        its module already registered that name).
    """

    def __init__(
        self, kind: str, entry_point_group: str | None = None, singular: str | None = None
    ) -> None:
        self.kind = kind
        self.singular = singular or kind[:-1]
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` act as a decorator."""

        def _add(value: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not value:
                raise ValueError(f"{self.singular} {name!r} is already registered")
            self._items[name] = value
            return value

        if obj is not None:
            return _add(obj)
        return _add

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what was registered under it."""
        self._load_entry_points()
        try:
            return self._items.pop(name)
        except KeyError:
            raise UserInputError(f"{self.singular} {name!r} is not registered") from None

    @contextmanager
    def registered(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` as ``name`` for the duration of a ``with`` block."""
        self._load_entry_points()
        previous = self._items.get(name)
        self.register(name, obj, overwrite=True)
        try:
            yield obj
        finally:
            if previous is None:
                self._items.pop(name, None)
            else:
                self._items[name] = previous

    def reload_entry_points(self) -> None:
        """Scan the entry-point group again (after installing a plugin at run time)."""
        self._entry_points_loaded = self.entry_point_group is None
        self._load_entry_points()

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            try:
                loaded = ep.load()
            except Exception as err:  # a broken plugin must not take the others down
                first = str(err).splitlines()[0] if str(err) else type(err).__name__
                LOGGER.warning(
                    "skipping %s %r from entry point %s: %s",
                    self.singular,
                    ep.name,
                    ep.value,
                    first,
                )
                continue
            if ep.name not in self._items:
                self._items[ep.name] = loaded

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` or raise a one-line error."""
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UserInputError(
                f"unknown {self.singular} {name!r}; registered {self.kind}: {known}"
            ) from None

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(sorted(self._items))

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style ``pattern``, sorted."""
        self._load_entry_points()
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        self._load_entry_points()
        return sorted(self._items.items())
