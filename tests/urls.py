from django.contrib import admin
from django.urls import path

from sitemessage.toolbox import get_sitemessage_urls
from tests.testapp.views import notify_team, user_preferences, welcome

urlpatterns = [
    path('admin/', admin.site.urls),
    path('prefs/', user_preferences),
    path('welcome/', welcome),
    path('notify-team/', notify_team),
]
urlpatterns += get_sitemessage_urls()
