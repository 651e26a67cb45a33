"""Settings for the Integration Portal: one module, driven by the environment.

Every variable is listed in `.env.example` and explained in docs/OPERATIONS.md. Defaults give
the embedded mode (SQLite + a server-less broker); production sets DATABASE_URL and REDIS_URL.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from portal import observability
from portal.env import (
    env_bool,
    env_choice,
    env_int,
    env_list,
    env_str,
    env_url,
    parse_allowlist,
    parse_duration,
    parse_encryption_keys,
    parse_rate,
    parse_retry_schedule,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("PORTAL_VAR_DIR") or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG"  # noqa: S105
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
PORT = env_int("PORT", 8000, minimum=1)

INSTALLED_APPS = [
    "portal.apps.PortalAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "integrations",
]

# Under /api/ a CSRF refusal answers the JSON envelope (integrations/api/errors.py).
CSRF_FAILURE_VIEW = "integrations.api.errors.csrf_failure"
MIDDLEWARE = [
    # First: every log line of the request carries its id (X-Request-ID, echoed back).
    "portal.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Admin pages show times in the user's tenant's zone (or UTC, if they chose it).
    "integrations.admin.zones.TimeZoneMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_SQLITE_DEFAULT = f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL") or _SQLITE_DEFAULT
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web and worker share one file: WAL lets readers run beside the writer, IMMEDIATE takes
    # the write lock at BEGIN (no lock upgrade deadlocks) and the busy timeout makes a writer
    # wait instead of failing with "database is locked". Connections are kept (60 s) as on
    # PostgreSQL: opening one per task was a third of the embedded worker's CPU per message
    # (bench/delivery.py --embedded, docs/PERFORMANCE.md).
    DATABASES["default"]["CONN_MAX_AGE"] = 60
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    VAR_DIR.mkdir(parents=True, exist_ok=True)
else:
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a health check that looks at the socket before it sends
        # SELECT 1 (portal/postgresql/base.py)
        DATABASES["default"]["ENGINE"] = "portal.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Behind PgBouncer in transaction mode a server connection changes between transactions:
    # no server-side cursors and no prepared statements.
    PGBOUNCER = env_bool("PORTAL_PGBOUNCER", False)
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = PGBOUNCER
    if not PGBOUNCER:
        # The hot-path SQL's cursor prepares its statements (outbox/sql.sql_cursor); the
        # rest of Django binds on the server too, so the statements a process repeats (a
        # worker's reload of the rows it claimed: 0.33 ms of planning each time) are prepared
        # after five runs (docs/PERFORMANCE.md, issue #16).
        DATABASES["default"].setdefault("OPTIONS", {})["prepare_threshold"] = 5
        DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Metrics (SPEC §10) ---------------------------------------------------------------------
# /metrics needs `Authorization: Bearer <token>` when set; when empty it answers loopback only.
PORTAL_METRICS_TOKEN = env_str("PORTAL_METRICS_TOKEN")
# Every web and worker process writes its counters here (prometheus-client's multiprocess
# mode); /metrics sums them. It must be set before prometheus_client is imported, and be one
# directory shared by all of them (compose: a shared volume). `make run` empties it at start.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

# --- Redis, Celery and cache ----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL")
# Without Redis: file-system messages written whole before they can be read (portal/broker.py).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or "portalfs://"
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {
    # Longer than any task runs (a delivery is bounded by its 10 s deadline), so Redis never
    # hands a still-running task to a second worker.
    "visibility_timeout": 3600,
}
if CELERY_BROKER_URL.startswith(("filesystem://", "portalfs://")):
    for sub in ("in", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        {
            "data_folder_in": str(BROKER_DIR / "in"),
            "data_folder_out": str(BROKER_DIR / "in"),
            "processed_folder": str(BROKER_DIR / "processed"),
            "control_folder": str(BROKER_DIR / "control"),
            "store_processed": False,
            # How often an idle worker looks for a new message file (kombu's default is
            # 1 s): each ticket's next message is queued when the previous one is answered,
            # so this was the spacing between one ticket's deliveries. A busy worker looks
            # every 5 ms (portal/broker.py).
            "polling_interval": 0.1,
        }
    )

if REDIS_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
else:
    # Shared by every web process on this machine, so the partner rate limit holds across them.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Portal behaviour (SPEC §3–§6) ----------------------------------------------------------
PORTAL_OUTBOUND_ALLOWLIST = parse_allowlist(env_str("PORTAL_OUTBOUND_ALLOWLIST"))
# Signing secrets and engine tokens are stored encrypted with these (first encrypts, all
# decrypt); unset, a key derived from SECRET_KEY is used. Keep them out of the database.
PORTAL_ENCRYPTION_KEYS = parse_encryption_keys(
    env_str("PORTAL_ENCRYPTION_KEYS"), secret_key=SECRET_KEY
)
PORTAL_RETRY_SCHEDULE = parse_retry_schedule(
    env_str("PORTAL_RETRY_SCHEDULE") or "0,5,300,1800,7200,18000,36000,36000"
)
PORTAL_PARTNER_RATE = parse_rate(env_str("PORTAL_PARTNER_RATE") or "50/second")
PORTAL_PARTNER_PAUSE_AFTER = parse_duration(
    env_str("PORTAL_PARTNER_PAUSE_AFTER") or "5d", name="PORTAL_PARTNER_PAUSE_AFTER"
)
PORTAL_ENGINE_BASE_URL = env_url("PORTAL_ENGINE_BASE_URL")
PORTAL_ENGINE_SEND_MESSAGE_PATH = env_str("PORTAL_ENGINE_SEND_MESSAGE_PATH")
PORTAL_ENGINE_COMMAND_PATH = env_str("PORTAL_ENGINE_COMMAND_PATH")
PORTAL_ENGINE_TOKEN = env_str("PORTAL_ENGINE_TOKEN")
PORTAL_MAX_BODY_BYTES = 256 * 1024
# Demo partner and engine receivers under /demo/ (on by default with DEBUG, for `make run`).
PORTAL_DEMO_ENDPOINTS = env_bool("PORTAL_DEMO_ENDPOINTS", DEBUG)
PORTAL_DISPATCH_INTERVAL = float(env_int("PORTAL_DISPATCH_INTERVAL_MS", 1000, minimum=100)) / 1000
# How long a claimed delivery stays leased before another worker may take it again: longer than
# the longest attempt (deadline 10 s by default, per partner at most 60 s).
PORTAL_DELIVERY_LEASE_SECONDS = env_int("PORTAL_DELIVERY_LEASE_SECONDS", 120, minimum=10)
# Deliveries of one target claimed, sent and recorded together by one task (a backlog drains
# in batches; one slow or failing partner never shares a batch with another).
PORTAL_DELIVERY_BATCH = env_int("PORTAL_DELIVERY_BATCH", 20, minimum=1)
# Requests one batch has in flight at once (a slow ticket does not hold up the others).
PORTAL_DELIVERY_PARALLEL = env_int("PORTAL_DELIVERY_PARALLEL", 4, minimum=1)
# The HTTP client outbound requests are sent with (integrations/delivery/): pycurl (the
# default) or requests. Both keep the same guarantees (SSRF guard at connect time, deadline,
# no redirects, no proxies, capped answers); "requests" is the fallback.
PORTAL_DELIVERY_CLIENT = env_choice("PORTAL_DELIVERY_CLIENT", ("curl", "requests"))
# Pumps one target may have at once (outbox/queue.py): an event wakes one; a pump that finds
# a full batch waiting recruits another, up to this many (slow partners: fair share below).
PORTAL_PUMPS_PER_TARGET = env_int("PORTAL_PUMPS_PER_TARGET", 4, minimum=1)
# How long (ms) a pump with nothing left waits for its target's next event before it ends
# (Redis only; 0: never): while it waits, an event costs a bell, not a queue message and a
# task. A waiting pump gives its worker slot back as soon as another task waits for one.
PORTAL_PUMP_LINGER_MS = env_int("PORTAL_PUMP_LINGER_MS", 1000, minimum=0)
# Fair share (SPEC §5): a partner whose average answer takes this long (ms), or that has not
# answered yet, is sent one batch at a time; slow partners share PORTAL_SLOW_PARTNER_BATCHES
# batches at once between them, so the other worker slots stay free for everyone else.
PORTAL_SLOW_PARTNER_MS = env_int("PORTAL_SLOW_PARTNER_MS", 1000, minimum=1)
PORTAL_SLOW_PARTNER_BATCHES = env_int("PORTAL_SLOW_PARTNER_BATCHES", 1, minimum=1)
# /readyz (SPEC §10): 503 when the scheduler or every worker has not reported for this many
# seconds, or when the oldest delivery that may go has waited longer than PORTAL_READY_MAX_LAG.
PORTAL_READY_HEARTBEAT_AGE = env_int("PORTAL_READY_HEARTBEAT_AGE", 60, minimum=3)
PORTAL_READY_MAX_LAG = env_int("PORTAL_READY_MAX_LAG", 300, minimum=1)

CELERY_TASK_ALWAYS_EAGER = False
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"  # JSON only: no pickle from a shared broker
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_IGNORE_RESULT = True  # state lives in the database; no result backend needed
CELERY_TASK_ACKS_LATE = True  # a task is acknowledged after it ran, so a crash re-queues it
CELERY_TASK_REJECT_ON_WORKER_LOST = True  # ... including a worker killed mid-task (SIGKILL)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a busy worker does not hoard messages others could run
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True  # wait for Redis instead of exiting at boot
# Celery's Django fixup closes every database connection around every task unless this is
# set, which made each delivery open a new PostgreSQL session (measured: +62 % deliveries/s
# with reuse, bench/delivery.py). Connections are still retired by Django's own rules
# (CONN_MAX_AGE, health checks) in portal/celery.py's task hooks.
CELERY_DB_REUSE_MAX = 1000
# beat writes the scheduler's heartbeat (portal/celery.py; /readyz reads it)
CELERY_BEAT_SCHEDULER = "portal.celery:HeartbeatScheduler"
CELERY_TASK_TIME_LIMIT = 300  # a stuck task is killed; its delivery lease expires and is retaken
CELERY_BEAT_SCHEDULE = {
    "dispatch-due-deliveries": {
        "task": "integrations.tasks.deliveries_dispatch",
        "schedule": PORTAL_DISPATCH_INTERVAL,
        # A dispatch that waited longer than one interval is superseded by the next one.
        "options": {"expires": max(PORTAL_DISPATCH_INTERVAL * 5, 5)},
    },
    "prune-old-events": {
        "task": "integrations.tasks.events_prune",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
}

# --- REST framework and schema --------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "integrations.api.errors.api_exception_handler",
}
# Requests above this are refused with 413 before the body is read (SPEC §3.4).
DATA_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
SPECTACULAR_SETTINGS = {
    "TITLE": "Integration Portal API",
    "DESCRIPTION": "Engine and partner endpoints of the Integration Portal (SPEC §3–§4).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "AcceptedStatusEnum": "integrations.api.schemas.SUCCESS_STATUS",
        "ErrorStatusEnum": "integrations.api.schemas.ERROR_STATUS",
        "TicketStatusEnum": "integrations.api.schemas.TICKET_STATUS",
        "DeliveryStatusEnum": "integrations.models.Delivery.Status",
        "AnyMessageTypeEnum": "integrations.api.schemas.ALL_TYPES",
        "PartnerMessageTypeEnum": "integrations.payloads.MESSAGE_TYPES",
    },
}

# --- Auth, i18n, static ---------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # counts failed logins and refuses locked ones
    "django.contrib.auth.backends.ModelBackend",
]
# After AXES_FAILURE_LIMIT failed logins for one username from one address, that login is
# locked for AXES_COOLOFF_MINUTES; a success resets the count.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "admin/locked_out.html"
AXES_VERBOSE = False
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("id", "Bahasa Indonesia")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
# Seconds and the zone's name on every time shown (portal/formats); pages activate the
# tenant's zone (integrations.admin.zones, the partner portal's views).
FORMAT_MODULE_PATH = ["portal.formats"]
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- E-mail (alerts) ------------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend"
    if not env_str("EMAIL_HOST")
    else "django.core.mail.backends.smtp.EmailBackend"
)
EMAIL_HOST = env_str("EMAIL_HOST") or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
# Seconds an SMTP connection may block: alerts run in tasks of their own, but a hung mail
# server must still not hold a worker slot for ever.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "portal@localhost"

# --- Production hardening -------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Health probes come from inside the container network over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
# Off by default: they bind every subdomain (and, once preloaded, browsers) to HTTPS.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# The partner portal (SPEC §9): how long a sign-in link stays valid (it is single-use), and
# how long the session it opens lasts.
PORTAL_PARTNER_LINK_TTL = env_int("PORTAL_PARTNER_LINK_TTL", 3600, minimum=60)
PORTAL_PARTNER_SESSION_TTL = env_int("PORTAL_PARTNER_SESSION_TTL", 12 * 3600, minimum=300)

# Plain lines by default; PORTAL_LOG_FORMAT=json gives one JSON object per line with the
# request, tenant, event, delivery and partner ids (portal/observability.py, SPEC §10).
try:
    PORTAL_LOG_FORMAT = observability.log_format()
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from exc
LOGGING = observability.logging_config(PORTAL_LOG_FORMAT, env_str("LOG_LEVEL") or "INFO")

# Errors to Sentry only when SENTRY_DSN is set, with secrets scrubbed from every report.
SENTRY_DSN = env_str("SENTRY_DSN")
observability.sentry_start(
    SENTRY_DSN,
    environment=env_str("SENTRY_ENVIRONMENT"),
    release=env_str("SENTRY_RELEASE"),
)

# A due delivery whose queue message was sent this long ago without being taken is queued
# again by the dispatcher (covers a lost broker message or a wiped Redis).
PORTAL_REDISPATCH_AFTER = env_int("PORTAL_REDISPATCH_AFTER", 60, minimum=1)
CELERY_BROKER_TRANSPORT_OPTIONS.setdefault("socket_connect_timeout", 3)
# Publishing gives up quickly when the broker is down: the row is in the database and the
# dispatcher queues it once the broker is back, so a request never waits on Redis for long.
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
