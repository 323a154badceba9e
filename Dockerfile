# One image with both binaries: `concord` (the etcd-compatible server, the default member image
# of EtcdClusters) and `concord-operator`. Build from the repository root:
#
#   docker build -t concord:0.1.0 -t concord-operator:0.1.0 .
#
# protoc is vendored by the store crate's build script; TLS is rustls on ring (no OpenSSL).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY store store
COPY operator operator
COPY tests tests
COPY crds crds
RUN cargo build --release --locked -p concord-store -p concord-operator --bin concord --bin concord-operator \
    && cp target/release/concord target/release/concord-operator /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/etcd
COPY --from=build /usr/local/bin/concord /usr/local/bin/concord
COPY --from=build /usr/local/bin/concord-operator /usr/local/bin/concord-operator
# Members listen on the etcd ports; the operator serves metrics on 8080.
EXPOSE 2379 2380 8080
ENTRYPOINT ["/usr/local/bin/concord"]
