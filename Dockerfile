# One image for web, worker and beat (docker-compose.yml picks the command).
FROM python:3.11-slim

# PYTHONPATH=/app: the code in /app is imported before the copy that `pip install .` puts in
# site-packages, so settings' BASE_DIR is /app (templates/, staticfiles/).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    PORT=8000

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
# The empty packages only let `pip install .` resolve; the real code replaces them below.
COPY pyproject.toml ./
RUN mkdir portal integrations \
    && touch portal/__init__.py integrations/__init__.py \
    && pip install . \
    && rm -rf portal integrations build *.egg-info

COPY . .
RUN pip install --no-deps . && rm -rf build *.egg-info

# Static files are collected at build time; whitenoise serves them. collectstatic needs no
# real secret and no database, but settings refuse to load without a SECRET_KEY when DEBUG is
# off, so a throwaway one is given to this one command only.
RUN DEBUG=false SECRET_KEY=build-time-only-not-secret python manage.py collectstatic --noinput

# Run unprivileged; only var/ (SQLite, broker folders, beat schedule) is writable.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin portal \
    && mkdir -p /app/var /app/metrics \
    && chown -R portal /app/var /app/metrics
USER portal

EXPOSE 8000
# exec: gunicorn becomes PID 1 and receives the stop signal itself.
CMD ["sh", "-c", "exec gunicorn portal.wsgi:application --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY:-2} --threads 4 --access-logfile -"]
