# linewatch: one image for the worker, the retraining agent, the simulator and the alert tail.
#   docker build -t linewatch .                                   # CPU-only torch (small image)
#   docker build -t linewatch:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Every setting is an environment variable: LINEWATCH_<SECTION>__<FIELD> (docs/configuration.md).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/linewatch
# dependencies first (cached while only the code changes), then the package itself
COPY pyproject.toml README.md ./
COPY stream_app ./stream_app
COPY models ./models
COPY deploy ./deploy
RUN pip install --extra-index-url "${TORCH_INDEX}" .

# run as an unprivileged user; /data holds the registry, state and claim-checked frames (volumes)
RUN useradd --create-home --uid 10001 --user-group linewatch \
    && mkdir -p /data/registry /data/state /data/frames \
    && chown -R linewatch:linewatch /data
USER linewatch
WORKDIR /data
ENV LINEWATCH_REGISTRY_DIR=/data/registry \
    LINEWATCH_STATE_DIR=/data/state \
    LINEWATCH_CLAIM_CHECK_DIRS='["/data/frames"]'

EXPOSE 9108
ENTRYPOINT ["linewatch"]
CMD ["--help"]
