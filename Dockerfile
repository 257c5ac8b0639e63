# ferrolb image: one static binary, used by both the controller and the agent.
#   docker build -t REGISTRY/ferrolb:TAG .
# Stage 1 builds a fully static musl binary (the crate uses rustls, no OpenSSL).
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits don't rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && sed -i '/^\[\[bench\]\]/,/^$/d' Cargo.toml \
 && cargo build --release --locked --target x86_64-unknown-linux-musl || true
COPY Cargo.toml ./
COPY src ./src
COPY crds ./crds
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl --bin ferrolb \
 && cp target/x86_64-unknown-linux-musl/release/ferrolb /ferrolb \
 && strip /ferrolb

# Stage 2: distroless static, nothing but the binary (no shell, no package manager).
# The default user is nonroot (65532); the controller runs as that. The agent's DaemonSet
# runs it as uid 0 with only NET_RAW and NET_ADMIN (see deploy/agent.yaml).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /ferrolb /usr/local/bin/ferrolb
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferrolb"]
CMD ["--help"]
