# One image runs every CityOps service (`cityops <domain> serve`) and the one-shot jobs
# (`cityops db migrate`, `python -m deploy.topics`, `python -m deploy.mqtt`).
# Build: docker build --target runtime -t cityops:latest .

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
# the same path in both stages: the editable install points at /app, where config/ lives beside the code
WORKDIR /app
COPY requirements.lock ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY shared/ shared/
COPY services/ services/
COPY deploy/ deploy/
COPY config/ config/
RUN /opt/venv/bin/pip install --no-deps -e . \
 && /opt/venv/bin/python -c "import shared.cli, deploy.services"

FROM python:3.11-slim-bookworm AS runtime
# libgomp: xgboost/scikit-learn threads; no compilers, no shell tools beyond the base image
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 libpango-1.0-0 libpangoft2-1.0-0 fonts-noto-cjk && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 cityops && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin cityops \
 && mkdir -p /etc/cityops/mqtt && chown 10001:10001 /etc/cityops/mqtt
# (a new named volume mounted there takes this owner, so the mqtt-credentials job can write into it)
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    CITYOPS_STATE_DIR=/tmp/cityops-state MPLCONFIGDIR=/tmp/matplotlib HOME=/tmp
USER 10001:10001
CMD ["cityops", "--help"]
