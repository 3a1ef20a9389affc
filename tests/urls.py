from django.contrib import admin
from django.urls import path

from sitemessage.toolbox import get_sitemessage_urls

urlpatterns = [path('admin/', admin.site.urls)]
urlpatterns += get_sitemessage_urls()
