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
