# The lbcp image: admin API (`lbcp api`), xDS replica (`lbcp xds`), CLI and demo backends.
# Envoy runs from Envoy's own image (docker-compose.yml, deploy/k8s/).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY controlplane ./controlplane
COPY api ./api
# The pinned versions the tests ran with; the package only (no dev extras).
RUN pip install --no-cache-dir -c constraints.txt . \
 && useradd --system --uid 10001 lbcp
USER lbcp
EXPOSE 8080 18000 9100
ENTRYPOINT ["lbcp"]
CMD ["--help"]
