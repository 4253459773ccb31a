# syntax=docker/dockerfile:1
# rolesanywhere-agent: a small non-root image. See README.md, "Container" for the sidecar use.
#
# The base is pinned by version; a release build should pin it by digest as well, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
# A venv without pip of its own: the final stage gets the agent and its wheels, no installer.
RUN python -m venv --without-pip /opt/agent \
    && python -m pip --python /opt/agent/bin/python install --no-compile . \
    && /opt/agent/bin/python -m compileall -q /opt/agent/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rolesanywhere-agent" \
      org.opencontainers.image.description="IAM Roles Anywhere credential agent" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/agent /opt/agent
# Token files go to a volume shared with the application container; the agent owns it.
RUN mkdir -p /run/rolesanywhere-agent \
    && chown 65532:65532 /run/rolesanywhere-agent \
    && chmod 0711 /run/rolesanywhere-agent
ENV PATH=/opt/agent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9912
VOLUME ["/run/rolesanywhere-agent"]
# Slim images have no curl: ask /health with the interpreter that is there anyway.
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9912/health', timeout=3)"]
ENTRYPOINT ["rolesanywhere-agent"]
CMD ["serve", "--config", "/etc/rolesanywhere-agent/agent.yaml"]
