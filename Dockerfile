FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY statemachines statemachines
COPY orchestrator orchestrator
COPY participants participants
RUN pip install --no-cache-dir .
ENTRYPOINT ["saga"]
