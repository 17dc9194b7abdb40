# The phone agent in a slim image: `docker build -t phone-agent .`
# Configuration comes from the environment (docs/configuration.md); .dockerignore keeps
# .git, tests, benchmarks and deploy/.env (secrets) out of the build context.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY telephony ./telephony
# The demo shop's tools, the example agent: imported from the working directory, not installed.
# Your agent: copy or mount your project (agents.toml, its tools module) and set AGENTS_FILE.
COPY tools ./tools
# Every optional backend the documented variables can switch on: REDIS_URL (redis),
# DATABASE_URL (postgres), OTEL_EXPORTER_OTLP_ENDPOINT (otel). A variable whose extra
# is missing stops the server at start-up, so the image carries them all.
RUN pip install ".[redis,postgres,otel]" \
    && useradd --create-home --uid 10001 agent \
    && mkdir -p /app/data && chown agent:agent /app/data

# Call records (SQLite when DATABASE_URL is unset), the demo orders database and call
# recordings live under /app/data: mount a volume there, or they go with the container.
VOLUME ["/app/data"]

USER agent
ENV PORT=8000
EXPOSE 8000
# Twilio holds a call's WebSocket for as long as the call lasts: on SIGTERM the server
# stops taking calls and lets active ones finish (DRAIN_TIMEOUT_SECONDS) before exiting.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"8000\")}/healthz', timeout=2)"
CMD ["sh", "-c", "exec telephony serve --host 0.0.0.0 --port ${PORT}"]
