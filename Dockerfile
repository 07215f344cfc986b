# The service image: the same install as `make run` (a venv with this package), for the head
# and for worker nodes. Build: docker build -t image-job-service .
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY core ./core
COPY actors ./actors
COPY service ./service
COPY launcher ./launcher
COPY imgjobs ./imgjobs
COPY data/store_master.csv ./data/store_master.csv
COPY serve_config.yaml ./

RUN python -m venv /app/.venv \
    && /app/.venv/bin/python -m pip install --no-cache-dir --upgrade pip \
    && /app/.venv/bin/python -m pip install --no-cache-dir -e . \
    && touch /app/.venv/.installed

# Serve's HTTP servers answer a bad header of Serve's own with a 400 (service/edge.py).
ENV PATH="/app/.venv/bin:$PATH" \
    IMAGE_SERVICE_HOST=0.0.0.0 \
    IMAGE_SERVICE_DATA_DIR=/data \
    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=service.edge:middlewares
VOLUME /data
EXPOSE 8000 8265 6379 8080

# A single-node service, as `make run`. For a cluster, run `ray start` (head or worker) instead.
CMD ["python", "-m", "launcher"]
