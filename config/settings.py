"""classcast settings, driven by environment variables (see README "Configuration").

The embedded default (no variables set) is SQLite, the in-memory channel layer with the media node in
the web process, and a Celery broker on the local filesystem; there the service makes its own secret
key (kept in the var dir). Setting DATABASE_URL, REDIS_URL and CELERY_BROKER_URL runs the same code
scaled out, which refuses to start without DJANGO_SECRET_KEY. CLASSCAST_HTTPS=true is the switch for a
deployment behind a TLS proxy (README "Production settings").
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF

from .env import env_bool, env_int, env_json, env_list, env_str, secret_key_load

# Every process loads these settings first: what it creates (the SQLite file, keys, recordings, HLS)
# is never world-readable. Group read stays, for a web server in the service's group serving HLS from
# disk; a stricter umask the operator set is kept.
os.umask(os.umask(0o027) | 0o027)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("CLASSCAST_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if "CLASSCAST_VAR_DIR" not in os.environ and VAR_DIR.stat().st_mode & 0o007:
    VAR_DIR.chmod(0o700)  # the checkout's own var/, made world-readable by earlier versions

DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# --- HTTPS and browser protections ------------------------------------------------------------------
# One switch for a deployment behind a TLS-terminating proxy (nginx, a load balancer) that sets
# X-Forwarded-Proto (and overwrites any the client sent): secure cookies, redirect to https, HSTS.
CLASSCAST_HTTPS = env_bool("CLASSCAST_HTTPS", False)
if CLASSCAST_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    # Probes and Prometheus reach the processes directly over the internal network, without the proxy.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("CLASSCAST_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CLASSCAST_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("CLASSCAST_HSTS_PRELOAD", False)
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True  # no script of ours reads it: forms carry the token
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Preloading is a submission to the browsers' list (hstspreload.org), slow to undo: an operator's
# choice (CLASSCAST_HSTS_PRELOAD), not something `check --deploy` should nag every deployment about.
SILENCED_SYSTEM_CHECKS = [] if env_bool("CLASSCAST_HSTS_PRELOAD", False) else ["security.W021"]

# Content-Security-Policy (django-csp): our scripts and styles only, from our origin; no inline code.
# connect-src also gets ws(s)://<host> of each request (config.security) for the class socket.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:", "blob:"],
        "media-src": [SELF, "blob:"],  # hls.js plays through MediaSource blob: URLs
        "worker-src": [SELF, "blob:"],  # hls.js runs its demuxer in a blob: worker
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# --- Sign-in throttling (django-axes) ---------------------------------------------------------------
# Keyed by username AND address: a whole school behind one NAT address is not locked out by one
# person's mistakes, and guessing one account's password from one address stops after the limit.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("CLASSCAST_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("CLASSCAST_LOGIN_COOLOFF_S", 15 * 60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "config.security.login_paused"
AXES_CLIENT_IP_CALLABLE = "config.security.client_ip"
AXES_DISABLE_ACCESS_LOG = True  # failed attempts are what throttling needs; not a log of every sign-in
# Reverse proxies in front that append the client's address to X-Forwarded-For (0: use the socket's).
CLASSCAST_PROXY_COUNT = env_int("CLASSCAST_PROXY_COUNT", 0)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "csp",
    "classroom",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.security.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the "sign-in paused" page
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = None

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

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'classcast.sqlite3'}"), conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file (not :memory:) so live-server tests in another process see the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "capacity": 1500, "expiry": 30},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# The embedded default: one machine, SQLite, no Redis (what `make run` starts). Only there may the
# service make its own secret key and create demo logins unasked.
CLASSCAST_EMBEDDED_DEFAULT = DATABASES["default"]["ENGINE"].endswith("sqlite3") and not REDIS_URL
# Signs sessions, service tokens, HLS tokens and download links: see config.env.secret_key_load.
SECRET_KEY = secret_key_load(var_dir=VAR_DIR, embedded=CLASSCAST_EMBEDDED_DEFAULT)
# `manage.py seed_demo` creates the demo class and logins elsewhere than the embedded default too.
CLASSCAST_DEMO_DATA = env_bool("CLASSCAST_DEMO_DATA", False)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns on every request without it
# hls.js comes from npm at set-up (`make`), served as /static/vendor/hls/hls.light.min.js: no CDN at run time.
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/hls", BASE_DIR / "node_modules" / "hls.js" / "dist")]
WHITENOISE_USE_FINDERS = True  # serve straight from static/ without collectstatic on the embedded default
MEDIA_ROOT = Path(env_str("CLASSCAST_MEDIA_ROOT", str(VAR_DIR / "media")))

# --- Celery ---------------------------------------------------------------------------------------
_celery_fs = VAR_DIR / "celery"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(_celery_fs / "queue"),
        "data_folder_out": str(_celery_fs / "queue"),
        "processed_folder": str(_celery_fs / "processed"),
        "control_folder": str(_celery_fs / "control"),  # kombu's default is ./control, in the checkout
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {}
)
if CELERY_BROKER_URL.startswith("filesystem"):
    CELERY_BROKER_TRANSPORT = "config.filesystem_broker:Transport"  # atomic writes, see there
    (_celery_fs / "queue").mkdir(parents=True, exist_ok=True)
    (_celery_fs / "processed").mkdir(parents=True, exist_ok=True)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE = {
    "media-nodes-reap": {"task": "classroom.tasks.media_nodes_reap", "schedule": 30.0},
    "broadcasts-watchdog": {"task": "classroom.tasks.broadcasts_watchdog", "schedule": 5.0},
    "recordings-watchdog": {"task": "classroom.tasks.recordings_watchdog", "schedule": 5.0},
    "recordings-expire": {"task": "classroom.tasks.recordings_expire", "schedule": 3600.0},
}
# Long media jobs (compositor, recorder) on their own queue, one at a time per worker process.
CELERY_TASK_ROUTES = {
    "classroom.tasks.broadcast_run": {"queue": "media"},
    "classroom.tasks.recording_run": {"queue": "media"},
}

# --- Cache (viewer counts): Redis when scaled out, per-process memory on the embedded default -------
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- Media plane ----------------------------------------------------------------------------------
# ICE servers handed to browsers and to aiortc. Empty by default: nothing reaches for a public STUN
# server, host candidates are enough on one machine. JSON list of RTCIceServer objects.
CLASSCAST_ICE_SERVERS = env_json("CLASSCAST_ICE_SERVERS", [])
# TURN with coturn's `use-auth-secret` (TURN REST API): short-lived credentials per stage member.
CLASSCAST_TURN_URLS = env_list("CLASSCAST_TURN_URLS", [])
CLASSCAST_TURN_SECRET = env_str("CLASSCAST_TURN_SECRET")
CLASSCAST_TURN_TTL_S = env_int("CLASSCAST_TURN_TTL_S", 3600)
# Host addresses aiortc offers as ICE candidates (comma list, e.g. 127.0.0.1 or the public IP);
# empty = every interface but loopback, as aioice chooses.
CLASSCAST_ICE_HOST_ADDRESSES = env_list("CLASSCAST_ICE_HOST_ADDRESSES", [])
# Kernel receive buffer (bytes) asked for on each UDP socket that takes media in (a publisher's
# connection on the media node, an egress job's stage connection); capped by net.core.rmem_max. 0 keeps
# the kernel default (~208 KB, under half a second of a whole stage).
CLASSCAST_UDP_RECEIVE_BUFFER = env_int("CLASSCAST_UDP_RECEIVE_BUFFER", 4 * 1024 * 1024)
# The media node runs inside the web process unless the channel layer can reach another process.
CLASSCAST_MEDIA_NODE_EMBEDDED = env_bool("CLASSCAST_MEDIA_NODE_EMBEDDED", not REDIS_URL)
CLASSCAST_MEDIA_NODE_ID = env_str("CLASSCAST_MEDIA_NODE_ID", f"{socket.gethostname()}-node")
CLASSCAST_MEDIA_NODE_HEARTBEAT_S = env_int("CLASSCAST_MEDIA_NODE_HEARTBEAT_S", 5)
# How often the node collects every participant's link figures (/metrics, the pages' tile indicators).
CLASSCAST_MEDIA_NODE_STATS_S = float(env_str("CLASSCAST_MEDIA_NODE_STATS_S", "2"))
# What the node sends each subscriber leaves at this multiple of that subscriber's estimate (its
# browser's REMB, lowered by the loss it reports), audio first, retransmissions within a budget
# (rtc/pacer.py). 0 turns pacing off: every packet leaves at once, as aiortc sends it.
CLASSCAST_STAGE_PACING_FACTOR = float(env_str("CLASSCAST_STAGE_PACING_FACTOR", "1.5"))
# Where publishers' browsers start their send-side bandwidth estimate (x-google-start-bitrate): a clean
# link reaches the top layer in seconds, a weak one backs off on its first losses. 0: the browser's own
# (300 kbit/s in Chromium).
CLASSCAST_STAGE_START_BITRATE_KBPS = env_int("CLASSCAST_STAGE_START_BITRATE_KBPS", 1000)
# Publishers' browsers estimate their uplink themselves from the node's transport-wide feedback (their
# congestion control of a direct call: delay trend, loss, probing). False: from the REMB of the node's
# receive-side estimate, which takes jitter for congestion.
CLASSCAST_STAGE_TRANSPORT_CC = env_bool("CLASSCAST_STAGE_TRANSPORT_CC", True)
CLASSCAST_MEDIA_NODE_CAPACITY = env_int("CLASSCAST_MEDIA_NODE_CAPACITY", 12)  # stage members per node
CLASSCAST_MEDIA_NODE_METRICS_PORT = env_int("CLASSCAST_MEDIA_NODE_METRICS_PORT", 0)
CLASSCAST_STAGE_LIMIT = env_int("CLASSCAST_STAGE_LIMIT", 9)
# The video codec every stage connection negotiates: the node forwards frames as they are, so all
# publishers and subscribers share one. vp8 (every browser) or h264.
CLASSCAST_VIDEO_CODEC = env_str("CLASSCAST_VIDEO_CODEC", "vp8")
# The stage's video layers, highest first, `name:height:scale_down_by:max_bps:max_fps` (sfu/layers.py):
# each publisher sends its camera once per layer, each subscriber gets the one its link carries.
# One entry turns layering off.
# One layer by default: with three (e.g. "f:360:1:1200000:30,h:180:2:200000:30,q:90:4:100000:15") a
# student on an impaired uplink was all but invisible to the teacher in bench/network.py (0.2-0.4 fps),
# where one layer holds 20-28 fps; layers stay available for stages where that link is not the problem.
CLASSCAST_STAGE_LAYERS = env_str("CLASSCAST_STAGE_LAYERS", "f:360:1:1200000:30")
# Service tokens (egress workers joining as hidden subscribers).
CLASSCAST_SERVICE_TOKEN_TTL_S = env_int("CLASSCAST_SERVICE_TOKEN_TTL_S", 300)
# /metrics answers signed-in staff, or Prometheus with this bearer token.
CLASSCAST_METRICS_TOKEN = env_str("CLASSCAST_METRICS_TOKEN")
# Signaling limits.
CLASSCAST_WS_MAX_MESSAGE_BYTES = env_int("CLASSCAST_WS_MAX_MESSAGE_BYTES", 64 * 1024)
CLASSCAST_WS_RATE_PER_S = env_int("CLASSCAST_WS_RATE_PER_S", 20)

# --- Broadcast: compositor -> RTMP -> HLS packager -> viewers --------------------------------------
CLASSCAST_RTMP_HOST = env_str("CLASSCAST_RTMP_HOST", "127.0.0.1")  # the packager's ingest listens here
CLASSCAST_RTMP_PORT = env_int("CLASSCAST_RTMP_PORT", 1935)
# The ingest URL as encoders (OBS, the compositor) reach it; the stream key is appended.
CLASSCAST_RTMP_INGEST_URL = env_str("CLASSCAST_RTMP_INGEST_URL", f"rtmp://127.0.0.1:{CLASSCAST_RTMP_PORT}/live")
CLASSCAST_PACKAGER_METRICS_PORT = env_int("CLASSCAST_PACKAGER_METRICS_PORT", 0)
CLASSCAST_HLS_ROOT = Path(env_str("CLASSCAST_HLS_ROOT", str(VAR_DIR / "hls")))
CLASSCAST_HLS_SEGMENT_S = float(env_str("CLASSCAST_HLS_SEGMENT_S", "2.0"))
CLASSCAST_HLS_WINDOW = env_int("CLASSCAST_HLS_WINDOW", 6)
# Low-latency HLS: partial segments of at most this many seconds (0 turns LL-HLS off: plain HLS).
CLASSCAST_HLS_PART_S = float(env_str("CLASSCAST_HLS_PART_S", "0.334"))
CLASSCAST_HLS_TOKEN_TTL_S = env_int("CLASSCAST_HLS_TOKEN_TTL_S", 6 * 3600)
CLASSCAST_PROGRAM_WIDTH = env_int("CLASSCAST_PROGRAM_WIDTH", 1280)
CLASSCAST_PROGRAM_HEIGHT = env_int("CLASSCAST_PROGRAM_HEIGHT", 720)
CLASSCAST_PROGRAM_FPS = env_int("CLASSCAST_PROGRAM_FPS", 30)
CLASSCAST_PROGRAM_VIDEO_BITRATE = env_int("CLASSCAST_PROGRAM_VIDEO_BITRATE", 2_500_000)
CLASSCAST_PROGRAM_AUDIO_BITRATE = env_int("CLASSCAST_PROGRAM_AUDIO_BITRATE", 128_000)
CLASSCAST_X264_PRESET = env_str("CLASSCAST_X264_PRESET", "veryfast")
# HLS quality ladder, top (the program) first: '<height>p[:<bitrate>]' video rungs and 'audio' (AAC only),
# each encoded once by the compositor and published as its own stream; one rung = no ladder.
CLASSCAST_HLS_LADDER = env_str("CLASSCAST_HLS_LADDER", "720p,360p,180p:120k:48k,audio")
# Admission control: cost units one worker host takes (a 1280x720@30 program costs 1.0, 1.31 with the default
# ladder: two such programs per host).
CLASSCAST_EGRESS_CAPACITY = float(env_str("CLASSCAST_EGRESS_CAPACITY", "2.7"))
# Where egress workers reach the class sockets (they join like a browser does).
CLASSCAST_SIGNALING_URL = env_str("CLASSCAST_SIGNALING_URL", "ws://127.0.0.1:8000")
CLASSCAST_BROADCAST_HEARTBEAT_S = float(env_str("CLASSCAST_BROADCAST_HEARTBEAT_S", "1.0"))
CLASSCAST_BROADCAST_STALE_S = float(env_str("CLASSCAST_BROADCAST_STALE_S", "10.0"))

# --- Recordings -----------------------------------------------------------------------------------
# The recorder writes raw track files into the spool (a local or shared disk: post-processing reads it,
# so media and default workers must share it); published files go to the "recordings" storage, which
# is local disk by default and any Django storage backend (e.g. django-storages S3) by settings.
CLASSCAST_RECORDING_SPOOL = Path(env_str("CLASSCAST_RECORDING_SPOOL", str(VAR_DIR / "recordings" / "spool")))
CLASSCAST_RECORDINGS_STORAGE_BACKEND = env_str(
    "CLASSCAST_RECORDINGS_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"
)
CLASSCAST_RECORDINGS_STORAGE_OPTIONS = env_json(
    "CLASSCAST_RECORDINGS_STORAGE_OPTIONS", {"location": str(VAR_DIR / "recordings" / "store")}
)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "recordings": {"BACKEND": CLASSCAST_RECORDINGS_STORAGE_BACKEND, "OPTIONS": CLASSCAST_RECORDINGS_STORAGE_OPTIONS},
}
# Days a published recording is kept (a class may set its own); 0 keeps recordings until deleted.
CLASSCAST_RECORDING_RETENTION_DAYS = env_int("CLASSCAST_RECORDING_RETENTION_DAYS", 90)
CLASSCAST_RECORDING_HEARTBEAT_S = float(env_str("CLASSCAST_RECORDING_HEARTBEAT_S", "1.0"))
CLASSCAST_RECORDING_STALE_S = float(env_str("CLASSCAST_RECORDING_STALE_S", "10.0"))
# A track file's growing frame count reaches its row this often (opened/closed files: at once).
CLASSCAST_RECORDING_FILES_REPORT_S = 10.0
# Signed download/playback links live this long.
CLASSCAST_RECORDING_LINK_TTL_S = env_int("CLASSCAST_RECORDING_LINK_TTL_S", 600)
# Quality checks: black, frozen or silent stretches at least this long are reported.
CLASSCAST_QC_BLACK_S = float(env_str("CLASSCAST_QC_BLACK_S", "5.0"))
CLASSCAST_QC_FROZEN_S = float(env_str("CLASSCAST_QC_FROZEN_S", "5.0"))
CLASSCAST_QC_SILENCE_S = float(env_str("CLASSCAST_QC_SILENCE_S", "10.0"))
# The ffmpeg binary for post-processing (ffmpeg-python); empty = on PATH, else the imageio-ffmpeg wheel's.
CLASSCAST_FFMPEG = env_str("CLASSCAST_FFMPEG")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "classroom.logs.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": env_str("CLASSCAST_LOG_LEVEL", "INFO")},
    "loggers": {
        "aioice": {"level": "WARNING"},
        "aiortc": {"level": "WARNING"},
        "axes": {"level": "WARNING"},  # failures and lockouts; not every sign-in nor its banner at start
        "daphne": {"level": "WARNING"},
        "django.channels.server": {"level": "WARNING"},
    },
}

# --- HTTP edge security ---
# The stand-alone media node's and packager's Prometheus ports listen here only (not every interface).
CLASSCAST_METRICS_BIND = env_str("CLASSCAST_METRICS_BIND", "127.0.0.1")

# --- Class socket limits ---
# Open class sockets one person may hold in one class in one web process (tabs, windows); the next
# is accepted, told why and closed with 4429. 0 = no cap.
CLASSCAST_WS_MAX_SOCKETS_PER_USER = env_int("CLASSCAST_WS_MAX_SOCKETS_PER_USER", 8)
# Every open socket re-reads its person's access this often (s) besides on membership and account
# changes and before each action: the backstop for changes that send no signal. 0 = never.
CLASSCAST_WS_ACCESS_RECHECK_S = float(env_str("CLASSCAST_WS_ACCESS_RECHECK_S", "60"))

# --- Ingest and destination limits ---
# RTMP ingest (manage.py hls_packager). Connections that have not published with a valid key yet
# ("pending") have a pool of their own, so idle or hostile sockets cannot lock a real publisher out:
# a full pool, or an address at its own pending limit, closes its oldest pending connection.
CLASSCAST_RTMP_MAX_PUBLISHERS = env_int("CLASSCAST_RTMP_MAX_PUBLISHERS", 64)
CLASSCAST_RTMP_MAX_PENDING = env_int("CLASSCAST_RTMP_MAX_PENDING", 32)
CLASSCAST_RTMP_MAX_PENDING_PER_IP = env_int("CLASSCAST_RTMP_MAX_PENDING_PER_IP", 4)
# Pending + publishing from one address (IPv6: one /64); 0 = no limit, the default: every compositor
# worker of a host publishes from that host's address (127.0.0.1 on one machine), one per live class,
# and a publisher already holds a valid stream key. The pending limits above are what stop floods.
CLASSCAST_RTMP_MAX_CONNECTIONS_PER_IP = env_int("CLASSCAST_RTMP_MAX_CONNECTIONS_PER_IP", 0)
# Seconds from accept to an accepted publish (handshake, connect, publish), else the socket is closed.
CLASSCAST_RTMP_AUTH_TIMEOUT_S = float(env_str("CLASSCAST_RTMP_AUTH_TIMEOUT_S", "10"))
# Broadcast destinations may not point inside our network (loopback, private, link-local...: SSRF from
# the worker) unless named here: host names, IP addresses or networks (CIDR), comma-separated, e.g. a
# lab's nginx-rtmp. The ingest (CLASSCAST_RTMP_INGEST_URL) is always allowed.
CLASSCAST_DESTINATION_ALLOWED_HOSTS = env_list("CLASSCAST_DESTINATION_ALLOWED_HOSTS")
