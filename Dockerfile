# syntax=docker/dockerfile:1
# Build: docker build -t agent-vault .
# Run (see the README's Docker section; the password file must be readable by uid 10001):
#   docker run -d --name agent-vault \
#     -p 127.0.0.1:14321:14321 -p 127.0.0.1:14322:14322 \
#     -v agent-vault-data:/data \
#     -v "$PWD/master-password:/run/secrets/master:ro" \
#     -e AGENT_VAULT_MASTER_PASSWORD_FILE=/run/secrets/master \
#     -e AGENT_VAULT_SERVER__PUBLIC_URL=http://127.0.0.1:14321 \
#     agent-vault
# The ports are published on the host's loopback only; inside the container the server listens
# on every interface (AGENT_VAULT_SERVER__HOST below) so the published ports reach it, and
# public_url names the address people and links use, which also pins the accepted Host header.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /src
# gcc, cmake and perl build aws-lc-rs; pkg-config for the rest.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake perl pkg-config clang \
    && rm -rf /var/lib/apt/lists/*
# Every path Cargo.toml declares must exist even to build only the binary (the bench and the
# test binary's entry included); tests/it/packaging.rs checks these lines against it.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin agent-vault \
    && cp target/release/agent-vault /usr/local/bin/agent-vault

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 agentvault \
    && useradd --system --uid 10001 --gid agentvault --home-dir /data --shell /usr/sbin/nologin agentvault \
    && mkdir -p /data \
    && chown agentvault:agentvault /data \
    && chmod 0700 /data
COPY --from=builder /usr/local/bin/agent-vault /usr/local/bin/agent-vault
COPY config/agent-vault.example.toml /etc/agent-vault/agent-vault.example.toml
USER agentvault
ENV HOME=/data \
    AGENT_VAULT_DATA_DIR=/data \
    AGENT_VAULT_SERVER__HOST=0.0.0.0 \
    AGENT_VAULT_LOG__FORMAT=json
VOLUME ["/data"]
EXPOSE 14321 14322
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:14321/v1/health || exit 1
ENTRYPOINT ["agent-vault"]
CMD ["server"]
