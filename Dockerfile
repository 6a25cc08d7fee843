FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY statemachines statemachines
COPY orchestrator orchestrator
COPY participants participants
# The extras: /metrics (SAGA_METRICS_PORT), traces (OTEL_*), and saga web.
RUN pip install --no-cache-dir '.[metrics,tracing,web]'
ENTRYPOINT ["saga"]
