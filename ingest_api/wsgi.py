"""The WSGI entry point for gunicorn: ``ingest_api.wsgi:app``."""

from ingest_api.app import create_app
from shared.cli_support import settings_or_exit

app = create_app({"MAILROOM_SETTINGS": settings_or_exit("ingest-api", ["database_url"])})
