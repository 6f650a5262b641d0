"""Portico control-plane settings, read from the environment (see README: Configuration).

Two modes:

- embedded defaults (``PORTICO_ENV=development``, the default): SQLite and a
  file-system Celery broker under ``var/``, per-install secrets generated into
  ``var/`` on first start; nothing to install beyond the requirements;
- production (``PORTICO_ENV=production``): every secret must be given, and a missing
  one stops the process at start with a message naming it.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from config.env import (
    ConfigurationError,
    env_bool,
    env_int,
    env_list,
    env_str,
    secret_from_env_or_file,
)
from gateway.egress import EgressPolicy

BASE_DIR = Path(__file__).resolve().parent.parent

PORTICO_ENV = env_str("PORTICO_ENV", "development")
if PORTICO_ENV not in {"development", "production"}:
    raise ConfigurationError(f"PORTICO_ENV must be development or production, not {PORTICO_ENV!r}")
PRODUCTION = PORTICO_ENV == "production"
VAR_DIR = Path(env_str("PORTICO_VAR_DIR", str(BASE_DIR / "var")) or "var").resolve()

SECRET_KEY = secret_from_env_or_file(
    "PORTICO_SECRET_KEY", VAR_DIR / "secret_key", generate=not PRODUCTION, nbytes=48
)
# Shared with every gateway process: authenticates both directions and seals upstream
# secrets inside revisions (see gateway/secrets.py).
PORTICO_GATEWAY_SECRET = secret_from_env_or_file(
    "PORTICO_GATEWAY_SECRET", VAR_DIR / "gateway_secret", generate=not PRODUCTION
)
# Key-encryption key for upstream secrets at rest (envelope encryption, catalog/crypto.py).
PORTICO_KEK = secret_from_env_or_file("PORTICO_KEK", VAR_DIR / "kek", generate=not PRODUCTION)

DEBUG = env_bool("PORTICO_DEBUG", default=False)
ALLOWED_HOSTS = env_list("PORTICO_ALLOWED_HOSTS", [] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env_list("PORTICO_CSRF_TRUSTED_ORIGINS", [])

PORTICO_GATEWAY_PUBLIC_URL = env_str("PORTICO_GATEWAY_PUBLIC_URL", "http://127.0.0.1:8080")
# Where the portal's own server reaches the gateway (the playground's calls).
PORTICO_GATEWAY_INTERNAL_URL = env_str("PORTICO_GATEWAY_INTERNAL_URL", PORTICO_GATEWAY_PUBLIC_URL)
# Lifetime of the short-lived key the playground issues for a developer's app.
PORTICO_PLAYGROUND_KEY_SECONDS = env_int("PORTICO_PLAYGROUND_KEY_SECONDS", 900, minimum=120)
PORTICO_PORTAL_URL = env_str("PORTICO_PORTAL_URL", "http://127.0.0.1:8000")
# A gateway that has not heartbeaten for this long is no longer delivered to.
PORTICO_GATEWAY_INSTANCE_TTL = env_int("PORTICO_GATEWAY_INSTANCE_TTL", 30, minimum=5)
# How many compiled revisions to keep (older ones are pruned; a gateway that far
# behind simply gets the newest full revision).
PORTICO_REVISIONS_KEPT = env_int("PORTICO_REVISIONS_KEPT", 20, minimum=2)
# Key changes reach gateways as deltas; this often the whole state is compiled anyway,
# catching expiries and drift (gatewaysync.tasks.revision_reconcile_task).
PORTICO_FULL_COMPILE_SECONDS = env_int("PORTICO_FULL_COMPILE_SECONDS", 600, minimum=10)
PORTICO_RECONCILE_SECONDS = env_int("PORTICO_RECONCILE_SECONDS", 5, minimum=1)
# MCP servers: how often beat lists every server's tools again (a tool changed upstream
# is held for review from then on), and how long one discovery may take in all.
PORTICO_MCP_REFRESH_SECONDS = env_int("PORTICO_MCP_REFRESH_SECONDS", 900, minimum=30)
PORTICO_MCP_DISCOVERY_TIMEOUT_SECONDS = env_int(
    "PORTICO_MCP_DISCOVERY_TIMEOUT_SECONDS", 30, minimum=1
)
# Agents: how often beat fetches every A2A agent's card again (and probes REST agents).
PORTICO_AGENT_REFRESH_SECONDS = env_int("PORTICO_AGENT_REFRESH_SECONDS", 300, minimum=30)
# MCP clients over OAuth (oauth/): how long a refresh token lasts unused. Each use
# rotates it; access tokens live 15 minutes (gateway/access_tokens.py).
PORTICO_OAUTH_REFRESH_TOKEN_DAYS = env_int("PORTICO_OAUTH_REFRESH_TOKEN_DAYS", 30, minimum=1)
# Admin-set URLs (upstreams, OAuth token URLs, OpenAPI imports) reach public addresses
# only, and these networks, addresses or host names besides (gateway/egress.py).
PORTICO_EGRESS_ALLOW = env_list("PORTICO_EGRESS_ALLOW", [])
try:
    EgressPolicy.parse(PORTICO_EGRESS_ALLOW)
except ValueError as exc:
    raise ConfigurationError(f"PORTICO_EGRESS_ALLOW: {exc}") from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "template_partials",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "portal",
    "catalog",
    "consumers",
    "gatewaysync",
    "oauth",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "portal.middleware.PortalMiddleware",
    "portal.audit.AuditContextMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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
                "portal.context_processors.portal",
            ],
        },
    }
]

_default_db = f"sqlite:///{VAR_DIR / 'portico.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL", None if PRODUCTION else _default_db)
if DATABASE_URL is None:
    raise ConfigurationError("DATABASE_URL is not set. Production requires PostgreSQL.")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the portal, the worker and beat read while one of them writes.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # The end-to-end tests run real processes against the test database, so it must
    # be a file they can open, not SQLite's private in-memory database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_portico.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = not PRODUCTION

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# REST API (config/api_urls.py). A personal access token first: an anonymous caller
# then gets 401 with `WWW-Authenticate: Bearer`, which tells a script what to send; a
# Bearer header, when present, decides (a bad one is a 401 even with a session). Without
# one the browser session applies, with DRF's CSRF check on state changes. The gateways'
# endpoints set their own authentication (gatewaysync/apis.py).
REST_FRAMEWORK: dict[str, object] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.authentication.AccessTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        # HTML for browsers (Accept: text/html) with DRF's own static files: no CDN.
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

# Celery: Redis when REDIS_URL is set, else a file-system broker under var/.
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {}
else:
    _broker_dir = VAR_DIR / "celery" / "broker"
    _broker_dir.mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://localhost/"
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"  # atomic writes; see config/broker.py
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "control_folder": str(VAR_DIR / "celery" / "control"),
        "polling_interval": 0.2,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The file-system broker has no fan-out exchange for remote control.
CELERY_WORKER_ENABLE_REMOTE_CONTROL = bool(REDIS_URL)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celery" / "beat-schedule")
CELERY_TASK_ALWAYS_EAGER = env_bool("PORTICO_CELERY_EAGER", default=False)

# Usage events: the gateway writes them to this Redis stream when REDIS_URL is set.
PORTICO_USAGE_STREAM = "portico:usage"
PORTICO_USAGE_GROUP = "portico-ingest"

LOG_LEVEL = env_str("PORTICO_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # The MCP SDK's HTTP client logs every request line at INFO: noise in the worker.
        "httpx2": {"level": "WARNING"},
    },
}

# Email: SMTP when PORTICO_EMAIL_HOST is set, else printed to the log (embedded default).
EMAIL_HOST = env_str("PORTICO_EMAIL_HOST", "") or ""
EMAIL_BACKEND = env_str(
    "PORTICO_EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env_int("PORTICO_EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("PORTICO_EMAIL_HOST_USER", "") or ""
EMAIL_HOST_PASSWORD = env_str("PORTICO_EMAIL_HOST_PASSWORD", "") or ""
EMAIL_USE_TLS = env_bool("PORTICO_EMAIL_USE_TLS", default=True)
EMAIL_FILE_PATH = env_str("PORTICO_EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
DEFAULT_FROM_EMAIL = env_str("PORTICO_EMAIL_FROM", "Portico <portal@localhost>")

# Shared state between control-plane processes (login throttling, cached lookups): Redis
# when configured, else per-process memory, which is right for a single process.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    if REDIS_URL
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

# Accounts (django-allauth): sign-in by email, verified before first use; failed logins
# are throttled per address and per account (allauth's ACCOUNT_RATE_LIMITS defaults).
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "portal.adapters.SocialAccountAdapter"
ACCOUNT_FORMS = {"login": "portal.adapters.PortalLoginForm"}
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_EMAIL_SUBJECT_PREFIX = ""
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False  # never link accounts by an unverified email
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "portal:apps"
ACCOUNT_LOGOUT_REDIRECT_URL = "portal:home"

# Periodic tasks expire rather than pile up while no worker is running.
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "revision-reconcile": {
        "task": "gatewaysync.revision_reconcile",
        "schedule": float(PORTICO_RECONCILE_SECONDS),
        "options": {"expires": float(PORTICO_RECONCILE_SECONDS)},
    },
    "mcp-refresh": {
        "task": "catalog.mcp_servers_refresh",
        "schedule": float(PORTICO_MCP_REFRESH_SECONDS),
        "options": {"expires": float(PORTICO_MCP_REFRESH_SECONDS)},
    },
    "agents-refresh": {
        "task": "catalog.agents_refresh",
        "schedule": float(PORTICO_AGENT_REFRESH_SECONDS),
        "options": {"expires": float(PORTICO_AGENT_REFRESH_SECONDS)},
    },
}
if REDIS_URL:
    CELERY_BEAT_SCHEDULE["usage-drain"] = {
        "task": "gatewaysync.usage_drain",
        "schedule": 1.0,
        "options": {"expires": 5.0},
    }

SPECTACULAR_SETTINGS = {
    "TITLE": "Portico API",
    "DESCRIPTION": (
        "The developer and admin REST API of Portico's control plane: the catalog, your "
        "apps, their keys and subscriptions, personal access tokens, and subscription "
        "review for administrators. Authenticate with a browser session or "
        "`Authorization: Bearer portico_pat_…`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The public API only, not the gateways' endpoints (also for `manage.py spectacular`).
    "PREPROCESSING_HOOKS": ["portal.apis.schema_public_endpoints"],
}
