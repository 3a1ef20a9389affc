"""Bundled views: unsubscribe and mark-read links from messages.

A GET of a valid unsubscribe link only shows a confirmation page (mail scanners and link
prefetchers follow links); the page's form, or a mail client's RFC 8058 one-click request,
POSTs to the same URL, which unsubscribes. ``SITEMESSAGE_UNSUBSCRIBE_CONFIRM = False`` makes a
GET unsubscribe at once, as 1.4.0 did. Mark-read acts on GET (it is an ``<img>``). Neither needs
a CSRF token: the link's signature is the protection.

Each action checks its own signature (:mod:`sitemessage.links`). An unsubscribe link still works
after its dispatch was cleaned up: its token names the recipient, type and messenger. A link that
cannot act ends in the failure signal and an "invalid link" answer (400, or 410 when what it named
is gone), never in the success redirect, and no input makes these views answer 5xx.
"""

from __future__ import annotations

from typing import Optional

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.csrf import csrf_exempt

from .exceptions import UnknownMessageTypeError
from .links import (
    ACTION_MARK_READ,
    ACTION_UNSUBSCRIBE,
    STATUS_GONE,
    STATUS_INVALID,
    LinkData,
    invalid_link_response,
    is_legacy_signature,
    is_mark_read_signature_valid,
    parse_id,
    read_unsubscribe_token,
)
from .models import Dispatch, Message
from .registry import get_registered_message_type
from .settings import get_setting
from .signals import sig_mark_read_failed, sig_unsubscribe_failed

_CONFIRM_TEMPLATE = 'sitemessage/unsubscribe_confirm.html'
_ACTIONS = {'handle_unsubscribe_request': ACTION_UNSUBSCRIBE, 'handle_mark_read_request': ACTION_MARK_READ}


def _check_signature(action: str, message_type, message_id: int, dispatch_id: int, hashed: str):
    """Return ``(valid, link data)``: the data only for a valid unsubscribe token."""
    if action == ACTION_UNSUBSCRIBE:
        link = read_unsubscribe_token(message_id, dispatch_id, hashed)
        if link is not None:
            return True, link
    elif is_mark_read_signature_valid(message_id, dispatch_id, hashed):
        return True, None
    # 1.4.0 links carry one signature for both actions: accepted by both while the setting allows.
    legacy = (
        message_type is not None
        and is_legacy_signature(hashed)
        and message_type.is_dispatch_hash_valid(dispatch_id, message_id, hashed)
    )
    return legacy, None


def _load_dispatch(dispatch_id: int) -> Optional[Dispatch]:
    # The context is not needed here: a row whose context cannot be read must not break the link.
    return (
        Dispatch.objects.select_related('message')
        .defer('message__context', 'message_cache')
        .filter(pk=dispatch_id)
        .first()
    )


def _rebuilt_from_link(link: LinkData):
    """Unsaved stand-ins of a cleaned-up message and dispatch, for the handler and the signals."""
    message = Message(pk=link.message_id, cls=link.message_type, context={})
    dispatch = Dispatch(
        pk=link.dispatch_id,
        message=message,
        messenger=link.messenger,
        recipient_id=link.recipient_id,
        address=link.address,
    )
    return message, dispatch


def _generic_view(
    message_method: str,
    fail_signal,
    request: HttpRequest,
    message_id,
    dispatch_id,
    hashed,
    redirect_to: Optional[str] = None,
    confirm: bool = False,
) -> HttpResponse:
    action = _ACTIONS[message_method]

    def fail(status: int) -> HttpResponse:
        fail_signal.send(None, request=request, message=message_id, dispatch=dispatch_id)
        return invalid_link_response(request, action, status)

    message_pk, dispatch_pk, hashed = parse_id(message_id), parse_id(dispatch_id), str(hashed)
    if message_pk is None or dispatch_pk is None:
        return fail(STATUS_INVALID)
    dispatch = _load_dispatch(dispatch_pk)
    if dispatch is not None and dispatch.message_id != message_pk:
        return fail(STATUS_INVALID)
    try:
        message_type = dispatch.message.get_type() if dispatch is not None else None
    except UnknownMessageTypeError:
        return fail(STATUS_GONE)

    hash_is_valid, link = _check_signature(action, message_type, message_pk, dispatch_pk, hashed)
    if dispatch is not None:
        message = dispatch.message
    elif link is not None:  # cleaned up: the signed token says whom to unsubscribe from what
        message, dispatch = _rebuilt_from_link(link)
        try:
            message_type = get_registered_message_type(link.message_type)
        except UnknownMessageTypeError:
            return fail(STATUS_GONE)
    else:
        return fail(STATUS_GONE if hash_is_valid or is_legacy_signature(hashed) else STATUS_INVALID)

    assert message_type is not None  # found with the dispatch, or from the link
    if confirm and hash_is_valid:
        return render(
            request,
            _CONFIRM_TEMPLATE,
            {'message_type_title': message_type.title, 'action_url': request.path, 'redirect_to': redirect_to},
        )
    return getattr(message_type, message_method)(
        request, message, dispatch, hash_is_valid=hash_is_valid, redirect_to=redirect_to
    )


@csrf_exempt
def unsubscribe(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Unsubscribe the dispatch's recipient from its message type (on POST); redirect to ``redirect_to`` ('/').

    A GET of a valid link renders ``sitemessage/unsubscribe_confirm.html`` and changes nothing, unless
    ``SITEMESSAGE_UNSUBSCRIBE_CONFIRM`` is False. An invalid link renders ``sitemessage/link_invalid.html``.
    """
    confirm = request.method != 'POST' and get_setting('UNSUBSCRIBE_CONFIRM')
    return _generic_view(
        'handle_unsubscribe_request',
        sig_unsubscribe_failed,
        request,
        message_id,
        dispatch_id,
        hashed,
        redirect_to=redirect_to or '/',
        confirm=confirm,
    )


@csrf_exempt
def mark_read(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Mark the dispatch read; redirect to a transparent pixel (for ``<img>`` tags)."""
    return _generic_view(
        'handle_mark_read_request',
        sig_mark_read_failed,
        request,
        message_id,
        dispatch_id,
        hashed,
        redirect_to=redirect_to or static('img/sitemessage/blank.png'),
    )
