"""Deprecated 1.4.0 names: still importable, each warning once used with its replacement."""

from __future__ import annotations

import warnings


def warn_deprecated(old: str, replacement: str) -> None:
    """Warn that ``old`` is deprecated in favour of ``replacement``, attributed to the code using it.

    Called from a module ``__getattr__``: ``stacklevel=3`` skips this function and that hook, so
    the warning names the project's line (the import machinery's frames are skipped too).
    """
    warnings.warn(
        f'{old} is deprecated since django-sitemessage 2.0; use {replacement} instead.',
        DeprecationWarning,
        stacklevel=3,
    )
