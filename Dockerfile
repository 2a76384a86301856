# syntax=docker/dockerfile:1
# PromptMQ container image: a Rust builder stage, then a small Debian runtime.
#
#   docker build -t promptmq .
#   docker run -d --name promptmq -p 1883:1883 -v promptmq-data:/data promptmq
#   docker run --rm promptmq --help      # arguments replace the default ones
#
# The runtime stage uses the same Debian release as the builder, so the binary's glibc
# matches. The broker runs as an unprivileged user (uid 10001) with its state in /data.

ARG RUST_VERSION=1
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# The whole context, .git included: broker/build.rs asks git for the commit that
# `promptmq --version` prints (.dockerignore keeps target/ and the like out).
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binary is
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p promptmq \
    && install -m 0755 target/release/promptmq /usr/local/bin/promptmq \
    && /usr/local/bin/promptmq --version

FROM debian:${DEBIAN_RELEASE}-slim
# tini as PID 1: it forwards SIGTERM/SIGINT to the broker (a PID 1 without handlers would
# ignore them, and `docker stop` would wait for its timeout) and reaps children.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 promptmq \
    && useradd --system --uid 10001 --gid promptmq --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin promptmq \
    && mkdir -p /data \
    && chown promptmq:promptmq /data
COPY --from=builder /usr/local/bin/promptmq /usr/local/bin/promptmq

# Defaults through the environment, so that `docker run IMAGE --flag ...` keeps them;
# any PROMPTMQ_* variable (see examples/promptmq.env) can be set with -e.
ENV PROMPTMQ_SERVER_BIND=0.0.0.0:1883 \
    PROMPTMQ_STORAGE_DATA_DIR=/data
VOLUME ["/data"]
# 1883: MQTT over TCP, served today. 8080 (MQTT over WebSocket) and 9090 (metrics) are
# reserved for listeners that are not implemented yet (see the README's Status).
EXPOSE 1883 8080 9090

USER 10001:10001
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/promptmq"]
CMD ["--data-dir", "/data"]
