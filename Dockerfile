# One image for every app service in docker-compose.yml (api, worker, beat, flower, migrate,
# sandbox); the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Metrics of every process (granian's, Celery's pool) in files that the API's /metrics adds
# up; every log line JSON: granian's own lines too, and no Celery start-up banner.
ENV PROMETHEUS_MULTIPROC_DIR=/app/var/prometheus \
    GRANIAN_LOG_CONFIG=/app/ops/granian-logging.json \
    CELERY_QUIET=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code itself. alembic.ini and migrations/ are read from /app at run time.
COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --user-group bulksms \
    && mkdir -p /app/var/prometheus \
    && chown -R bulksms:bulksms /app/var

# Not root: a compromised worker cannot modify the installed code.
USER bulksms

EXPOSE 8000 5555 8020
CMD ["granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "16", "--host", "0.0.0.0", "--port", "8000", "--access-log", "api.wsgi:app"]
