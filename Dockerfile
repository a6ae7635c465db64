# One image for the three mailroom apps; compose.yaml picks the command per service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs (there is no .dockerignore: never COPY . here).
COPY pyproject.toml setup.cfg /src/
COPY shared /src/shared
COPY ingest_api /src/ingest_api
COPY outbox_relay /src/outbox_relay
COPY mail_worker /src/mail_worker
RUN pip install /src \
    && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mailroom
USER mailroom
WORKDIR /home/mailroom

EXPOSE 8000
CMD ["ingest-api", "serve", "--bind", "0.0.0.0:8000"]
