"""WSGI entry point (gunicorn portal.wsgi:application)."""

import os

from django.core.wsgi import get_wsgi_application

from portal.observability import tracing_start

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Before the application loads its middleware: the Django instrumentation adds its own.
tracing_start("web")
application = get_wsgi_application()
