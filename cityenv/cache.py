"""One least-recently-used cache for the whole project.

Decoded views, prepared references, depth thumbnails, row groups, shortest-path trees and
reference latents are all kept in :class:`LRUCache` objects owned by the component that fills
them (STYLE: caches are objects with an explicit reset, passed around, never module globals).

One rule for a hit: the key is found, and, when the cache was given a ``valid`` check, the stored
value passes it for the key's caller (for example "was prepared from this very view object", so
two databases whose view ids collide never share an entry).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entry first.

    Args:
        capacity: Most entries kept; 0 keeps nothing (every lookup is a miss).

    Attributes:
        capacity: As given.
        hits: Lookups answered from the cache since the last :meth:`clear`.
        misses: Lookups that were not.

    Example::

        views = LRUCache[int, ReferenceView](256)
        view = views.get_or_create(view_id, lambda: load(view_id))
    """

    def __init__(self, capacity: int) -> None:
        if int(capacity) < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        self.capacity = int(capacity)
        self._items: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K, valid: Callable[[V], bool] | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``None`` on a miss.

        Args:
            key: The key.
            valid: Optional check of a stored value; a value that fails it is a miss.
        """
        value = self._items.get(key)
        if value is None or (valid is not None and not valid(value)):
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> V:
        """Store ``value`` under ``key`` (most recently used), evict beyond capacity; return it."""
        if self.capacity == 0:
            return value
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value

    def get_or_create(
        self, key: K, create: Callable[[], V], valid: Callable[[V], bool] | None = None
    ) -> V:
        """The cached value of ``key``, or ``create()`` stored under it."""
        value = self.get(key, valid)
        return value if value is not None else self.put(key, create())

    def clear(self) -> None:
        """Forget every entry and reset the hit counters."""
        self._items.clear()
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def __repr__(self) -> str:
        return f"LRUCache(capacity={self.capacity}, size={len(self)}, hits={self.hits})"
