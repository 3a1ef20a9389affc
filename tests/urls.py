from django.contrib import admin
from django.urls import path

from sitemessage.toolbox import get_sitemessage_urls
from tests.testapp.views import schedule_welcome, user_preferences

urlpatterns = [path('admin/', admin.site.urls), path('prefs/', user_preferences), path('welcome/', schedule_welcome)]
urlpatterns += get_sitemessage_urls()
