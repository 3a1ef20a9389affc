"""Renderings of a message kept for the rest of a delivery run.

A message to many recipients is claimed batch by batch; without this, each batch rendered its
template again (once per language). The engine opens a cache for each run
(:func:`keeping_renderings`), and :meth:`MessageBase.compile_for_dispatches` looks there first.
A rendering is reused only for the same message, type, messenger and language, and while the
message's context is unchanged (grouping merges contexts); renderings that depend on the
dispatch (``has_dynamic_context``, or a template that reads ``dispatch_model``) are not kept.
"""

from __future__ import annotations

import collections
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Dict, Hashable, Iterator, Optional, Tuple

# Enough for the messages of a few batches; the oldest go first once the texts pass MAX_CHARACTERS.
MAX_ENTRIES = 64
MAX_CHARACTERS = 16 * 1024 * 1024


class RenderCache:
    """``key -> (context, text, placeholders)``, least recently used first out."""

    def __init__(self) -> None:
        self._entries: 'collections.OrderedDict[Hashable, Tuple[Any, str, Dict[str, str]]]' = collections.OrderedDict()
        self._characters = 0
        self.hits = 0

    def get(self, key: Hashable, context: Any) -> Optional[Tuple[str, Dict[str, str]]]:
        """The text and link placeholders rendered for ``key`` from an equal ``context``, or None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] != context:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1], entry[2]

    def put(self, key: Hashable, context: Any, text: str, placeholders: Dict[str, str]) -> None:
        if len(text) > MAX_CHARACTERS:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._characters -= len(old[1])
        self._entries[key] = (context, text, placeholders)
        self._characters += len(text)
        while len(self._entries) > MAX_ENTRIES or self._characters > MAX_CHARACTERS:
            _key, (_context, dropped, _placeholders) = self._entries.popitem(last=False)
            self._characters -= len(dropped)


_CURRENT: ContextVar[Optional[RenderCache]] = ContextVar('sitemessage_render_cache', default=None)


def current() -> Optional[RenderCache]:
    """The cache of the delivery run in progress on this thread, or None (outside the engine)."""
    return _CURRENT.get()


@contextmanager
def keeping_renderings(cache: RenderCache) -> Iterator[RenderCache]:
    """Let renderings made inside the block be reused through ``cache``."""
    token = _CURRENT.set(cache)
    try:
        yield cache
    finally:
        _CURRENT.reset(token)
