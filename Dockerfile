# syntax=docker/dockerfile:1
# ferrolb image: one static binary, used by both the controller and the agent.
#   docker build -t REGISTRY/ferrolb:TAG .
# (Not built in CI: the machines that test ferrolb have no container engine.)

# Stage 1 builds a fully static musl binary (the crate uses rustls, no OpenSSL).
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin ferrolb \
 && cp target/x86_64-unknown-linux-musl/release/ferrolb /ferrolb \
 && strip /ferrolb

# Stage 2: distroless static, nothing but the binary (no shell, no package manager).
# It runs as nonroot (65532); the controller keeps that. The agent's DaemonSet runs it as
# uid 0 with only NET_RAW and NET_ADMIN (deploy/agent.yaml, charts/ferrolb).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ferrolb /usr/local/bin/ferrolb
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrolb"]
CMD ["--help"]
