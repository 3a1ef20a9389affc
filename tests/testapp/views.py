"""A preferences page as the documentation writes it (used by the view and browser tests)."""

from django.http import HttpResponseForbidden
from django.shortcuts import redirect, render

from sitemessage.toolbox import get_user_preferences_for_ui, set_user_preferences_from_request


def user_preferences(request):
    if not request.user.is_authenticated:
        return HttpResponseForbidden()
    if request.method == 'POST':
        set_user_preferences_from_request(request)
        return redirect(request.path)
    return render(request, 'testapp/preferences.html', {'subscr_prefs': get_user_preferences_for_ui(request.user)})


async def schedule_welcome(request):
    """An async view scheduling an e-mail with the async shortcut (tests/test_async_api.py)."""
    from django.http import JsonResponse

    from sitemessage.shortcuts import aschedule_email

    to = request.GET['to']
    await aschedule_email('Welcome aboard!', to, subject='Welcome', language=request.GET.get('language'))
    return JsonResponse({'scheduled': to})
