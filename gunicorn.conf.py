"""gunicorn settings read from the working directory (the Dockerfile's /app, `make run`'s
repository root); command-line flags add to them.

The access log format is gunicorn's default without `%(u)s`: that field decodes a Basic
Authorization header and would write its user name to the log, and a partner that sends its
API key as Basic credentials would have the key logged.
"""

import os

access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

# PORTAL_LOG_FORMAT=json: gunicorn's own lines (errors, the access log) in the portal's JSON
# format too (portal/observability.py), so every line of the web container is one object.
if os.environ.get("PORTAL_LOG_FORMAT", "").strip().lower() == "json":
    from portal.observability import gunicorn_logging_config

    logconfig_dict = gunicorn_logging_config()
