# syntax=docker/dockerfile:1
# cloudtrail-detector: the detector (`run`, the default), and the same image for `replay`, `scan`
# and `rules`. Configuration is the DETECTOR_* environment; see docker-compose.yml for a full stack.

# One base for both stages, so the virtualenv built in the first runs unchanged in the second.
# The digest pins the exact build of the tag; refresh both together
# (`docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Every runtime dependency ships binary wheels (confluent-kafka bundles librdkafka), so the
# builder needs no compiler either: it keeps the build tools, caches and source tree out of the
# final image, which receives only the finished virtualenv.
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
# consumer/schemas is a symlink to the top-level schemas/ folder: both must be in the context.
COPY schemas ./schemas
COPY consumer ./consumer
RUN /opt/venv/bin/pip install .


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="cloudtrail-detector" \
      org.opencontainers.image.description="Streaming detection of IAM CreateAccessKey for another user, on CloudTrail events in Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 detector \
    && useradd --system --uid 10001 --gid detector --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin detector

COPY --from=builder /opt/venv /opt/venv
# The bundled sample, at a short fixed path for `replay /app/samples/cloudtrail-sample.jsonl`.
COPY consumer/samples/ /app/samples/

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DETECTOR_METRICS_HOST=0.0.0.0 \
    DETECTOR_METRICS_PORT=9464

WORKDIR /app
USER 10001:10001
EXPOSE 9464

# /healthz answers 200 while the consume loop is alive; slim images have no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DETECTOR_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["cloudtrail-detector"]
CMD ["run"]
