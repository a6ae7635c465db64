"""gunicorn settings for ``ingest-api serve`` (``-c python:ingest_api.gunicorn_conf``).

Threaded workers keep client connections alive and share one database pool per
process; bind and worker count come from the command line.
"""

import os

worker_class = "gthread"
threads = int(os.environ.get("MAILROOM_API_THREADS", "8"))
keepalive = 30
graceful_timeout = 20
timeout = 60
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "ingest-api"
