# aitp, the AI Task Processor. Build: docker build -t aitp .   Run: see docker-compose.yml.
# No secret is baked in: OAUTH2_CLIENT_SECRET and OPENAI_API_KEY come from the environment (.env).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY aitp ./aitp
COPY actors ./actors
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AITP_DATA_DIR=/data \
    AITP_CONFIG=/etc/aitp/aitp.toml \
    METRICS_HOST=0.0.0.0 \
    METRICS_PORT=8001 \
    LOG_FORMAT=json
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin aitp \
    && mkdir -p /data /etc/aitp && chown aitp /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/aitp.toml /etc/aitp/aitp.toml
# The journal (claims, outbox of computed vectors), learned dimensions and rate-limit counts live here:
# keep it on a volume, or a restart forgets what it owed the task API.
VOLUME ["/data"]
USER aitp
EXPOSE 8001
# The slim image has no curl; Python is there. /health answers 503 once the service is failing.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('METRICS_PORT', '8001'), timeout=4)"
# SIGTERM (docker stop) drains gracefully within shutdown.deadline_seconds; give it that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aitp"]
CMD ["run"]
