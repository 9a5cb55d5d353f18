# podgate service image. Note: this machine has no Docker engine, so this file is not
# exercised by the test suite; `make run` is the supported way to start podgate here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY migrations ./migrations
RUN pip install --no-cache-dir -e '.[fast]'
ENV PODGATE_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["podgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
