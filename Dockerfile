# podgate service image. This machine has no container engine: tests/integration/
# test_container_files.py checks this file (non-root user, HEALTHCHECK) and runs its health
# command against a real `podgate serve`; `make run` is the supported way to start podgate.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN pip install --no-cache-dir -e '.[fast]' \
 && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin podgate \
 && mkdir -p /data && chown podgate:podgate /data
ENV PODGATE_DATA_DIR=/data
VOLUME ["/data"]
# Numeric, so that a runtime can check it is not root (Kubernetes runAsNonRoot).
USER 10001:10001
EXPOSE 8080
# /healthz needs no token. Beyond loopback podgate refuses to start without authentication:
# give --token-file FILE (docker-compose.yml generates one) or --auth kubernetes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["podgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
