FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY coby ./coby
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system --home /data coby && mkdir -p /data && chown coby /data
USER coby
ENV COBY_DATA_DIR=/data API_HOST=0.0.0.0
EXPOSE 8080
# A non-loopback bind requires COBY_API_TOKEN (set it in the environment).
ENTRYPOINT ["coby"]
CMD ["run"]
