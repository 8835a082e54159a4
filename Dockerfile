# syntax=docker/dockerfile:1
# Live Room Gateway: one `gateway serve` process per container, as a non-root user.
# Build: docker build -t live-room-gateway:0.1.0 .
# (No Docker engine runs where this project is developed: CI lints this file with hadolint and
#  runs the same `gateway serve` command the image runs, but does not build the image.)

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: they change far less often than the source. Only the
# gateway's: the Live Engine emulator (emulator/, and its aiohttp) is a test tool, not shipped.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY src/ src/
RUN pip install --no-deps . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
ARG UID=10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.yaml \
    GATEWAY_PORT=8080
RUN groupadd --system --gid ${UID} gateway \
 && useradd --system --uid ${UID} --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
# SIGTERM: readiness turns false, in-flight requests drain (GATEWAY_DRAIN_SECONDS), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
