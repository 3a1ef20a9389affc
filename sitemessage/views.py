"""Bundled views: unsubscribe and mark-read links from messages.

A GET of a valid unsubscribe link only shows a confirmation page (mail scanners and link
prefetchers follow links); the page's form, or a mail client's RFC 8058 one-click request,
POSTs to the same URL, which unsubscribes. ``SITEMESSAGE_UNSUBSCRIBE_CONFIRM = False`` makes a
GET unsubscribe at once, as 1.4.0 did. Mark-read acts on GET (it is an ``<img>``). Neither needs
a CSRF token: the link's signature is the protection. Any garbage in the URL ends in the
failure signal and a redirect, never an error.
"""
from __future__ import annotations

from typing import Optional

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.views.decorators.csrf import csrf_exempt

from .exceptions import UnknownMessageTypeError
from .models import Dispatch
from .settings import get_setting
from .signals import sig_mark_read_failed, sig_unsubscribe_failed

_CONFIRM_TEMPLATE = 'sitemessage/unsubscribe_confirm.html'


def _generic_view(message_method: str, fail_signal, request: HttpRequest, message_id, dispatch_id, hashed,
                  redirect_to: Optional[str] = None, confirm: bool = False) -> HttpResponse:
    try:
        dispatch = Dispatch.objects.select_related('message').get(pk=int(dispatch_id))
        if int(message_id) != dispatch.message_id:
            raise ValueError(message_id)
        message = dispatch.message
        message_type = message.get_type()
    except (ValueError, TypeError, OverflowError, Dispatch.DoesNotExist, UnknownMessageTypeError):
        fail_signal.send(None, request=request, message=message_id, dispatch=dispatch_id)
        return redirect(redirect_to)

    hash_is_valid = message_type.is_dispatch_hash_valid(dispatch_id, message_id, hashed)
    if confirm and hash_is_valid:
        return render(request, _CONFIRM_TEMPLATE, {
            'message_type_title': message_type.title, 'action_url': request.path, 'redirect_to': redirect_to})
    return getattr(message_type, message_method)(
        request, message, dispatch, hash_is_valid=hash_is_valid, redirect_to=redirect_to)


@csrf_exempt
def unsubscribe(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Unsubscribe the dispatch's recipient from its message type (on POST); redirect to ``redirect_to`` ('/').

    A GET of a valid link renders ``sitemessage/unsubscribe_confirm.html`` and changes nothing, unless
    ``SITEMESSAGE_UNSUBSCRIBE_CONFIRM`` is False.
    """
    confirm = request.method != 'POST' and get_setting('UNSUBSCRIBE_CONFIRM')
    return _generic_view('handle_unsubscribe_request', sig_unsubscribe_failed, request,
                         message_id, dispatch_id, hashed, redirect_to=redirect_to or '/', confirm=confirm)


@csrf_exempt
def mark_read(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Mark the dispatch read; redirect to a transparent pixel (for ``<img>`` tags)."""
    return _generic_view('handle_mark_read_request', sig_mark_read_failed, request,
                         message_id, dispatch_id, hashed, redirect_to=redirect_to or static('img/sitemessage/blank.png'))
