"""Users' subscription preferences: the data of the preferences table, and saving a posted form."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from django.http import HttpRequest

from .models import Subscription
from .registry import get_registered_message_types, get_registered_messenger_objects

_ALIAS_SEP = '|'
_PREF_POST_KEY = 'sm_user_pref'

Cell = Tuple[str, bool, bool]


def get_user_preferences_for_ui(
    user,
    message_filter: Optional[Callable] = None,
    messenger_filter: Optional[Callable] = None,
    new_messengers_titles: Optional[Dict[str, str]] = None,
) -> Tuple[List[str], Dict[str, List[Cell]]]:
    """Return ``(messenger titles, {message title: [(value, supported, subscribed), ...]})``."""
    new_messengers_titles = new_messengers_titles or {}
    messengers = {}
    for alias, messenger in get_registered_messenger_objects().items():
        if messenger.allow_user_subscription and (messenger_filter is None or messenger_filter(messenger)):
            messengers[str(new_messengers_titles.get(alias) or messenger.title)] = alias
    titles = sorted(messengers)

    subscribed = {f'{s.message_cls}{_ALIAS_SEP}{s.messenger_cls}' for s in Subscription.get_for_user(user)}
    rows: Dict[str, List[Cell]] = {}
    for alias, message_type in get_registered_message_types().items():
        if not message_type.allow_user_subscription:
            continue
        if message_filter is not None and not message_filter(message_type):
            continue
        supported = message_type.supported_messengers
        row = rows.get(str(message_type.title)) or [('', False, False)] * len(titles)
        touched = False
        for index, title in enumerate(titles):
            messenger_alias = messengers[title]
            if supported and messenger_alias not in supported:
                continue
            value = f'{alias}{_ALIAS_SEP}{messenger_alias}'
            row[index] = (value, True, value in subscribed)
            touched = True
        if touched:
            rows[str(message_type.title)] = row
    return titles, dict(sorted(rows.items()))


def allowed_pairs() -> Dict[str, Tuple[str, str]]:
    """Return the ``'<type>|<messenger>'`` values a user may subscribe to."""
    pairs = {}
    messengers = get_registered_messenger_objects()
    for message_alias, message_type in get_registered_message_types().items():
        if not message_type.allow_user_subscription:
            continue
        for messenger_alias, messenger in messengers.items():
            supported = message_type.supported_messengers
            if messenger.allow_user_subscription and (not supported or messenger_alias in supported):
                pairs[f'{message_alias}{_ALIAS_SEP}{messenger_alias}'] = (message_alias, messenger_alias)
    return pairs


def set_user_preferences_from_request(request: HttpRequest) -> bool:
    """Replace the user's subscriptions with the pairs posted in ``sm_user_pref``.

    Malformed, unknown or forbidden values are ignored. Returns whether any pair was kept and
    stored (False for an anonymous user, whose preferences cannot be stored).
    """
    allowed = allowed_pairs()
    kept = []
    for value in request.POST.getlist(_PREF_POST_KEY):
        pair = allowed.get(value)
        if pair is not None and pair not in kept:
            kept.append(pair)
    stored = Subscription.replace_for_user(request.user, kept)
    return stored and bool(kept)
