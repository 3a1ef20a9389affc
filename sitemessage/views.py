"""Bundled views: unsubscribe and mark-read links from messages.

Both accept GET and POST (RFC 8058 one-click unsubscribe posts without a CSRF token). Any
garbage in the URL ends in the failure signal and a redirect, never an error.
"""
from __future__ import annotations

from typing import Optional

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.views.decorators.csrf import csrf_exempt

from .exceptions import UnknownMessageTypeError
from .models import Dispatch
from .signals import sig_mark_read_failed, sig_unsubscribe_failed


def _generic_view(message_method: str, fail_signal, request: HttpRequest, message_id, dispatch_id, hashed,
                  redirect_to: Optional[str] = None) -> HttpResponse:
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
    return getattr(message_type, message_method)(
        request, message, dispatch, hash_is_valid=hash_is_valid, redirect_to=redirect_to)


@csrf_exempt
def unsubscribe(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Unsubscribe the dispatch's recipient from its message type; redirect to ``redirect_to`` ('/')."""
    return _generic_view('handle_unsubscribe_request', sig_unsubscribe_failed, request,
                         message_id, dispatch_id, hashed, redirect_to=redirect_to or '/')


@csrf_exempt
def mark_read(request: HttpRequest, message_id, dispatch_id, hashed, redirect_to: Optional[str] = None):
    """Mark the dispatch read; redirect to a transparent pixel (for ``<img>`` tags)."""
    return _generic_view('handle_mark_read_request', sig_mark_read_failed, request,
                         message_id, dispatch_id, hashed, redirect_to=redirect_to or static('img/sitemessage/blank.png'))
