# syntax=docker/dockerfile:1
# streamcar: multi-stage build, dependencies cached in their own layer,
# slim non-root runtime. Validated in CI by hadolint; see README.

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# 1. Dependencies only: build the workspace with empty sources so this layer
#    is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked -p streamcar \
    && rm -rf src bench/src
# 2. The service itself.
COPY src src
COPY lua lua
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p streamcar --bin streamcar \
    && strip target/release/streamcar

FROM debian:bookworm-slim
# curl only for the HEALTHCHECK probe.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl=7.88.* ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin streamcar \
    && mkdir -p /run/streamcar \
    && chown streamcar /run/streamcar
COPY --from=build /src/target/release/streamcar /usr/local/bin/streamcar
USER 10001
# Inside the container the API listens on all interfaces so the port can be
# published; compose publishes it on the host's loopback only.
ENV STREAMCAR_LISTEN=0.0.0.0:7400 \
    STREAMCAR_LOG_FORMAT=json
EXPOSE 7400
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=5 \
    CMD ["curl", "-fsS", "http://127.0.0.1:7400/readyz"]
ENTRYPOINT ["streamcar"]
CMD ["serve"]
