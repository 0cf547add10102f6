"""The example service on Django (ASGI), self-contained in one file, wrapped by buttress.

Run:  uvicorn examples.django_app:app       (or: buttress run examples.django_app:app)
Try:  curl -i localhost:8000/items/42      curl -i localhost:8000/boom      curl localhost:8000/metrics

``buttress.adapters.DjangoMiddleware`` tells buttress the route template of each request and
hands it the exception Django would otherwise swallow into its own 500 page. In a real
project those two lines go into ``settings.py`` (``MIDDLEWARE``) and ``asgi.py`` (``wrap``).
"""

from __future__ import annotations

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

import buttress

if not settings.configured:  # Django settings exist once per process.
    settings.configure(
        DEBUG=False,
        SECRET_KEY="example-only-not-a-secret",  # an example, never deployed
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["buttress.adapters.DjangoMiddleware"],
        INSTALLED_APPS=[],
        LOGGING_CONFIG=None,  # buttress configures logging
    )
    django.setup()


async def index(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"service": "example", "framework": "django"})


async def item(request: HttpRequest, item_id: str) -> HttpResponse:
    return JsonResponse({"item_id": item_id})


async def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the example failed on purpose")


urlpatterns = [
    path("", index),
    path("items/<str:item_id>", item),
    path("boom", boom),
]

from django.core.asgi import get_asgi_application  # noqa: E402 - after settings.configure

app = buttress.wrap(get_asgi_application(), rate_limits={"/items/{item_id}": "10/minute"})
