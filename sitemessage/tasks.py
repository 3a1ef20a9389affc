"""Old path of :mod:`sitemessage.background.tasks`; kept so that existing imports and dotted paths work.

Celery's ``autodiscover_tasks()`` imports this module, which registers ``sitemessage.send_scheduled``.
Patch the new home, not this module: names are looked up there.
"""

from .background import tasks as _impl
from .background.tasks import *  # noqa: F401,F403


def __getattr__(name: str):
    return getattr(_impl, name)  # private names and the lazily built ones
