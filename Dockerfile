# The shopscore worker image (also runs `generate`/`replay` for the compose demo producer).
# Runtime dependencies only: no TensorFlow; training and ONNX export use the `train` extra
# on a developer machine.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY offline_train ./offline_train
COPY exporters ./exporters
# rocksdb extra: SHOPSCORE_STORE=rocksdb:// keeps state on disk (under SHOPSCORE_DATA_DIR).
RUN pip install ".[rocksdb]" \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/shopscore shopscore

USER shopscore
WORKDIR /var/lib/shopscore
# Bind on all interfaces inside the container; peers and Prometheus reach it by host name.
ENV SHOPSCORE_WEB_HOST=0.0.0.0 \
    SHOPSCORE_WEB_PORT=6066 \
    SHOPSCORE_DATA_DIR=/var/lib/shopscore
EXPOSE 6066
# Ready = partitions assigned and tables recovered (GET /health answers 503 until then).
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SHOPSCORE_WEB_PORT', '6066'), timeout=2)"]
ENTRYPOINT ["shopscore"]
CMD ["worker"]
