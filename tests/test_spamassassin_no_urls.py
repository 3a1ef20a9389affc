"""A URLconf without sitemessage URLs: messages then carry no unsubscribe links."""

urlpatterns = []
