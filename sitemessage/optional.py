"""Optional dependencies (the pip extras): importing them with an error that names the extra."""

from __future__ import annotations

import sys
from importlib import import_module
from importlib.util import find_spec
from types import ModuleType
from typing import Optional

from .exceptions import SiteMessageConfigurationError


def import_optional(module_name: str, *, extra: str) -> ModuleType:
    """Import an optional dependency, or fail with an error naming the pip extra to install.

    A module already in ``sys.modules`` is used as it is: test suites put ``unittest.mock``
    objects there (no ``__spec__``), which ``find_spec`` would reject.
    """
    top = module_name.partition('.')[0]
    try:
        try:
            missing = find_spec(top) is None
        except ValueError:  # in sys.modules without a __spec__: a stand-in, used as it is
            missing = False
        if missing:
            raise ModuleNotFoundError(f'No module named {top!r}', name=top)
        return import_module(module_name)
    except ImportError as error:
        raise SiteMessageConfigurationError(
            f'The `{module_name}` package is required here: pip install "django-sitemessage[{extra}]" ({error})'
        ) from error


def stand_in_module(module_name: str) -> Optional[ModuleType]:
    """Return ``sys.modules[module_name]`` when a test put a stand-in there (no import spec), else None.

    Projects' suites replace ``twitter``, ``sleekxmpp`` or ``requests`` this way; a real
    import always has a ``__spec__``.
    """
    module = sys.modules.get(module_name)
    if module is None or getattr(module, '__spec__', None) is not None:
        return None
    return module
