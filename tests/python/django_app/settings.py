"""Minimal Django settings for tests/python/django_driver.py: one database (pgtier), one app."""

import os

SECRET_KEY = "pgtier-test-only"
USE_TZ = True
INSTALLED_APPS = ["pymatrix_notes"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["PGTIER_HOST"],
        "PORT": os.environ["PGTIER_PORT"],
        "USER": os.environ["PGTIER_USER"],
        "PASSWORD": os.environ["PGTIER_PASSWORD"],
        "NAME": os.environ["PGTIER_DB"],
        "CONN_MAX_AGE": 60,
        # psycopg 3 with server-side binding: the extended protocol, and psycopg prepares a
        # statement (named _pg3_N) on its 2nd execution.
        # TimeZone=UTC at startup: with USE_TZ Django wants the session in UTC, and when the
        # server reports another zone it runs SELECT set_config('TimeZone', ...), which pgtier
        # rightly treats as session state and pins the client to one server (all its reads
        # would then go to the primary).
        "OPTIONS": {
            "server_side_binding": True,
            "prepare_threshold": 2,
            "options": "-c TimeZone=UTC",
        },
    }
}
