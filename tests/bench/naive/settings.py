"""Settings of the benchmark's naive baseline: costmon's models, stock Django and DRF around them.

Bench-only (tests/bench/run.py serves it with its own gunicorn); never installed in the product.
"""

from costmon.settings import *  # noqa: F403

ROOT_URLCONF = "tests.bench.naive.urls"
WSGI_APPLICATION = "tests.bench.naive.wsgi.application"
# What `django-admin startproject` gives an API project, minus what an API does not use.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["costmon.core.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
}
