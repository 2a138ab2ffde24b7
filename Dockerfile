# The pitwall binary for the distributed stack (deploy/docker-compose.yml).
#   docker build -t pitwall .
# Stage 1 builds it (librdkafka from source, linking OpenSSL and zlib; the
# dashboard's uPlot from npm); stage 2 is a slim Debian with only what it links.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        build-essential pkg-config libssl-dev zlib1g-dev nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN npm ci --prefix crates/pitwall-server/web --no-audit --no-fund --loglevel=error \
    && cargo build --release --locked -p pitwall \
    && cp target/release/pitwall /usr/local/bin/pitwall

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/pitwall --create-home pitwall
COPY --from=build /usr/local/bin/pitwall /usr/local/bin/pitwall
COPY pitwall.toml /etc/pitwall/defaults.toml
USER pitwall
WORKDIR /var/lib/pitwall
EXPOSE 8086 9464
ENTRYPOINT ["pitwall"]
CMD ["--help"]
