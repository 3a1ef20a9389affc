from demo import views
from django.contrib import admin
from django.urls import path

from sitemessage.toolbox import get_sitemessage_urls

urlpatterns = [
    path('', views.home, name='home'),
    path('prefs/', views.preferences, name='preferences'),
    path('digest/', views.schedule_digest, name='schedule_digest'),
    path('flood/', views.flood, name='flood'),
    path('outbox/', views.outbox, name='outbox'),
    path('login-as-demo/', views.login_as_demo, name='login_as_demo'),
    path('admin/', admin.site.urls),
]
urlpatterns += get_sitemessage_urls()  # unsubscribe and mark-read links
