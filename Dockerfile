# The verimail image: one binary whose first argument picks the role.
#
#   docker build -t verimail .
#   docker run --rm --env-file .env verimail migrate
#   docker run --rm --env-file .env -p 8080:8080 verimail intake
#   docker run --rm --env-file .env verimail worker
#
# Configuration comes only from the environment (see .env.example).
#
# Stages:
#   planner  reduces the workspace to its manifests, Cargo.lock and an empty
#            stub for every build target, so its output changes only when a
#            manifest, the lock file or the set of targets changes;
#   builder  compiles every dependency from that skeleton (the cached layer),
#            then the real sources (the only layer a code change rebuilds);
#   runtime  Debian slim with CA certificates, a non-root user and the binary.

# Builder and runtime must be the same Debian release: the binary links
# against the builder's glibc. Both are build arguments so that a machine
# without an image registry can build this same file from local images:
# scripts/compose-e2e.sh (CI) passes a Debian bookworm made by debootstrap as
# RUNTIME_IMAGE and, as RUST_IMAGE, that base plus the machine's own Rust
# toolchain and crates cache with CARGO_NET_OFFLINE=true
# (.ci/compose/rust-builder/Dockerfile). Plain Dockerfile syntax, no
# `# syntax=` line and no BuildKit-only feature: the classic builder
# (DOCKER_BUILDKIT=0) and BuildKit build it alike, offline too.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- planner ------------------------------------------------------------------
FROM ${RUST_IMAGE} AS planner
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY . .
# `cargo metadata --no-deps` lists the source file of every target of every
# workspace member (lib, bins, build scripts, and targets declared by path in a
# manifest, which must exist for the manifest to load); each gets a stub.
RUN set -eu; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    metadata=$(cargo metadata --offline --no-deps --format-version 1); \
    for manifest in $(printf '%s' "$metadata" | grep -o '"manifest_path":"[^"]*"' | cut -d'"' -f4); do \
        rel=${manifest#/src/}; \
        mkdir -p "/skeleton/$(dirname "$rel")"; \
        cp "$rel" "/skeleton/$rel"; \
    done; \
    for target in $(printf '%s' "$metadata" | grep -o '"src_path":"[^"]*"' | cut -d'"' -f4); do \
        rel=${target#/src/}; \
        mkdir -p "/skeleton/$(dirname "$rel")"; \
        printf '#![allow(dead_code)]\nfn main() {}\n' > "/skeleton/$rel"; \
    done

# --- builder ------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# sqlx's checked statements build from the committed .sqlx/, with no database.
ENV SQLX_OFFLINE=true
# Dependencies only: this layer is reused until a manifest or Cargo.lock
# changes (the stubs' contents never change).
COPY --from=planner /skeleton/ ./
RUN cargo build --release --locked -p verimail
# The real sources: crates/ (with the askama templates in
# crates/verimail-worker/templates) and migrations/ (embedded at compile time
# by sqlx::migrate!). COPY keeps the files' original modification times,
# which may be older than the stub builds above; touching them makes cargo
# rebuild the workspace crates instead of keeping the stubs (the --version
# check fails the build should a stub ever slip through).
COPY . .
RUN find src crates migrations -type f -exec touch {} + \
    && cargo build --release --locked -p verimail \
    && install -D -m 0755 target/release/verimail /out/verimail \
    && /out/verimail --version | grep '^verimail '

# --- runtime ------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
# CA certificates for smtps:// and STARTTLS (lettre uses the system roots),
# unpinned on purpose: they must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 verimail \
    && useradd --system --uid 10001 --gid verimail --no-create-home \
        --home-dir /var/lib/verimail --shell /usr/sbin/nologin verimail \
    && install -d -o verimail -g verimail -m 0750 /var/lib/verimail
COPY --from=builder /out/verimail /usr/local/bin/verimail
# The working directory is the one place the process may write: with SMTP_URL
# unset, mail goes to VERIMAIL_OUTBOX (default ./outbox, here
# /var/lib/verimail/outbox).
WORKDIR /var/lib/verimail
USER 10001:10001
# Inside a container the loopback defaults would be unreachable from outside.
ENV VERIMAIL_LISTEN=0.0.0.0:8080 \
    VERIMAIL_METRICS_LISTEN=0.0.0.0:9091
# 8080: intake HTTP API (with /healthz, /readyz, /metrics);
# 9091: worker Prometheus /metrics.
EXPOSE 8080 9091
# Whatever the role: healthy when the process answers /healthz on one of its
# ports (the intake on VERIMAIL_LISTEN, the worker on
# VERIMAIL_METRICS_LISTEN). bash's /dev/tcp, as the image has no curl.
# docker-compose.yml sets stricter per-role checks (the intake's /readyz).
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=12 \
    CMD ["bash", "-c", "for addr in \"${VERIMAIL_LISTEN}\" \"${VERIMAIL_METRICS_LISTEN}\"; do (exec 3<>\"/dev/tcp/127.0.0.1/${addr##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 ') 2>/dev/null && exit 0; done; exit 1"]
ENTRYPOINT ["verimail"]
CMD ["--help"]
