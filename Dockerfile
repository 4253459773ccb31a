# syntax=docker/dockerfile:1
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
USER 65532:65532
EXPOSE 9912
ENTRYPOINT ["rolesanywhere-agent"]
CMD ["serve", "--config", "/etc/rolesanywhere-agent/agent.yaml"]
