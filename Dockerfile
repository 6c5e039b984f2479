# The gateway with its quickstart upstreams (Python servers from PyPI, server-everything from npm).
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm git curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --omit=dev
COPY pyproject.toml README.md .ci/constraints.txt ./
COPY gateway ./gateway
# The same locked versions CI tests (.ci/constraints.txt, from `uv pip compile`).
RUN pip install --no-cache-dir -c constraints.txt '.[fast,postgres,quickstart]'
COPY tool_manifests ./tool_manifests
COPY examples ./examples

RUN useradd --create-home --uid 10001 gateway \
    && mkdir -p /app/examples/quickstart/.state \
    && chown -R gateway:gateway /app/examples/quickstart
USER gateway

ENV GATEWAY_CONFIG=/app/examples/quickstart/gateway.yaml
EXPOSE 8765
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8765/healthz || exit 1
CMD ["sh", "-c", "mcp-gateway serve --config \"$GATEWAY_CONFIG\""]
