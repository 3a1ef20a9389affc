"""Recipients: who gets a message through which messenger, and the lists ``recipients()`` builds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, NamedTuple, Optional, Union

from .headers import check_recipients
from .registry import TypeMessenger, get_registered_messenger_object

if TYPE_CHECKING:  # pragma: nocover
    from django.contrib.auth.base_user import AbstractBaseUser


class Recipient(NamedTuple):
    """One addressee of a message through one messenger."""

    messenger: str
    user: Optional['AbstractBaseUser']
    address: str


TypeRecipient = Union[str, 'AbstractBaseUser', Recipient]
TypeRecipients = Union[TypeRecipient, Iterable[TypeRecipient]]


def is_iterable(v: Any) -> bool:
    """Tell whether ``v`` is an iterable other than a string."""
    return hasattr(v, '__iter__') and not isinstance(v, str)


def recipients(messenger: TypeMessenger, addresses: TypeRecipients) -> List[Recipient]:
    """Build the recipients list for a messenger (alias, class or instance).

    ``addresses`` is one user or address, or an iterable of them. Lists from several
    calls can be added together.
    """
    if isinstance(messenger, str):
        messenger = get_registered_messenger_object(messenger)
    result = RecipientList(messenger.structure_recipients_data(addresses))
    check_recipients(result)  # a line break or a second address is refused here, naming the value
    return result


class RecipientList(list):
    """A list of :class:`Recipient` that also adds up with ``recipients(...),`` tuples.

    The docs write ``x = recipients(...),`` (a trailing comma makes a 1-tuple) and then
    ``my_smtp_recipients + my_jabber_recipients``: a plain list would raise ``TypeError``.
    """

    def __add__(self, other):
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        return RecipientList([*self, *_flat_recipients(other)])

    def __radd__(self, other):
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        return RecipientList([*_flat_recipients(other), *self])


def _flat_recipients(items) -> list:
    if isinstance(items, Recipient):
        return [items]
    flat: list = []
    for item in items:
        if isinstance(item, (list, tuple)) and not isinstance(item, Recipient):
            flat.extend(item)  # a `recipients(...),` tuple holds the list
        else:
            flat.append(item)
    return flat
