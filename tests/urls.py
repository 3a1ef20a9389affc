from django.contrib import admin
from django.urls import path

from sitemessage.toolbox import get_sitemessage_inbox_urls, get_sitemessage_urls
from tests.testapp.views import user_preferences

urlpatterns = [path('admin/', admin.site.urls), path('prefs/', user_preferences)]
urlpatterns += get_sitemessage_urls()
urlpatterns += get_sitemessage_inbox_urls()
