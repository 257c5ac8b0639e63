# syntax=docker/dockerfile:1
# ferrolb image for docker users: one static binary, used by both the controller and the agent.
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t REGISTRY/ferrolb:TAG .
# The project builds and tests its image with scripts/image.sh (buildah, from scratch); this file
# produces the same layout — entrypoint, cmd, user, labels and files are compared with what
# image.sh built by crates/ferrolb-lab/tests/image.rs, so the two cannot drift apart.

# Stage 1: the static binary (glibc with crt-static; rustls, no OpenSSL), built exactly as
# scripts/image.sh builds it: cargo profile `image` (release, stripped), explicit host target.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    triple="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile image --target "$triple" --target-dir target/image \
      -p ferrolb-lab --bin ferrolb \
 && cp "target/image/$triple/image/ferrolb" /ferrolb \
 && ldd /ferrolb 2>&1 | grep -qE 'statically linked|not a dynamic executable'

# Stage 2: nothing but the binary and the passwd/group entries of root and nonroot (65532).
# It runs as nonroot; the controller keeps that. The agent's DaemonSet runs it as uid 0 with
# only NET_RAW and NET_ADMIN (deploy/agent.yaml, charts/ferrolb).
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://ferrolb.io
COPY --from=build --chown=0:0 --chmod=0755 /ferrolb /usr/local/bin/ferrolb
COPY --chown=0:0 --chmod=0644 scripts/image-rootfs/etc/passwd /etc/passwd
COPY --chown=0:0 --chmod=0644 scripts/image-rootfs/etc/group /etc/group
LABEL org.opencontainers.image.title="ferrolb" \
      org.opencontainers.image.description="Layer 2 LoadBalancer for bare-metal Kubernetes (controller and agent)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrolb"]
CMD ["--help"]
