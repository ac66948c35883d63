# The lbcp image: admin API (`lbcp api`), xDS replica (`lbcp xds`), CLI and demo backends.
# Envoy runs from Envoy's own image (docker-compose.yml, deploy/k8s/).

# Stage 1: the wheel, native xDS core included (Rust, built by maturin through pip).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.88 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY native ./native
COPY controlplane ./controlplane
COPY api ./api
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

# Stage 2: the runtime, without a compiler.
FROM python:3.11-slim
WORKDIR /app
COPY constraints.txt ./
COPY --from=build /wheels /wheels
# The pinned versions the tests ran with; the package only (no dev extras).
RUN pip install --no-cache-dir -c constraints.txt /wheels/*.whl \
 && rm -rf /wheels \
 && useradd --system --uid 10001 lbcp
USER lbcp
EXPOSE 8080 18000 9100
ENTRYPOINT ["lbcp"]
CMD ["--help"]
