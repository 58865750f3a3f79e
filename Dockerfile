# The citychain binary in a small image: built in the Rust image, run in
# debian:bookworm-slim with nothing but the binary, as a non-root user.
#
#   docker build -t citychain:dev .
#   docker run --rm citychain:dev --help
#
# A node runs on /etc/citychain/node.toml (mount its config there, and its key where the
# config's [node] key_file says) and keeps its data in the /data volume. Configs and keys
# for a whole federation: `citychain deploy-configs` (deploy/compose, deploy/k8s).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Dependencies first: built from the manifests alone, this layer is reused until
# Cargo.toml or Cargo.lock change, whatever happens to the sources.
COPY Cargo.toml Cargo.lock ./
COPY crates/cli/Cargo.toml crates/cli/
COPY crates/harness/Cargo.toml crates/harness/
RUN mkdir -p src crates/cli/src crates/harness/src \
    && touch src/lib.rs crates/harness/src/lib.rs \
    && echo 'fn main() {}' > crates/cli/src/main.rs \
    && cargo build --release --locked -p citychain-cli \
    && rm -rf src crates/cli/src crates/harness/src
COPY src src
COPY crates crates
COPY config config
# The sources are newer than the stubs' build, so only the workspace's crates rebuild.
RUN touch src/lib.rs crates/harness/src/lib.rs crates/cli/src/main.rs \
    && cargo build --release --locked -p citychain-cli \
    && cp target/release/citychain /usr/local/bin/citychain

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 citychain \
    && useradd --system --uid 10001 --gid citychain --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin citychain \
    && mkdir -p /data /etc/citychain \
    && chown citychain:citychain /data
COPY --from=builder /usr/local/bin/citychain /usr/local/bin/citychain
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["citychain"]
CMD ["node", "--config", "/etc/citychain/node.toml"]
