"""Async twins of the scheduling API, for async views and other coroutines.

Scheduling is a transaction (a message, its dispatches, a grouped message locked and merged), and
Django's async ORM has no async transactions; so each twin runs the sync implementation through
``sync_to_async(thread_sensitive=True)``: on the thread that owns the request's database
connection, with the transaction and every check exactly as in the sync call. Arguments are
passed on unchanged, so whatever the sync function accepts (keyword arguments added later
included), its twin accepts.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, TypeVar

from asgiref.sync import sync_to_async

from .scheduling import schedule_messages

Result = TypeVar('Result')


def async_twin(func: Callable[..., Result]) -> Callable[..., Awaitable[Result]]:
    """Return ``a<name>``: a coroutine function running ``func`` on the thread-sensitive executor."""

    @functools.wraps(func)  # the signature shown by help() and autodoc is the sync one
    async def twin(*args: Any, **kwargs: Any) -> Result:
        return await sync_to_async(func, thread_sensitive=True)(*args, **kwargs)

    twin.__name__ = twin.__qualname__ = f'a{func.__name__}'
    twin.__doc__ = (
        f'Async :func:`{func.__name__}`: the same arguments, result and errors; '
        'await it from an async view (see :mod:`sitemessage.async_api`).'
    )
    return twin


aschedule_messages = async_twin(schedule_messages)
