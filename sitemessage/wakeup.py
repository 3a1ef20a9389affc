"""Old path of :mod:`sitemessage.background.wakeup`; kept so that existing imports and dotted paths work.

Patch the new home, not this module: names are looked up there.
"""

from .background import wakeup as _impl
from .background.wakeup import *  # noqa: F401,F403


def __getattr__(name: str):
    return getattr(_impl, name)  # private names and the lazily built ones
