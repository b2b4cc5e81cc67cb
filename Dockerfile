# kimup's container image, for those with a Docker daemon (BuildKit). scripts/build-image.sh
# builds the same image without one; both take its filesystem from scripts/image-rootfs.sh.
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     -t ghcr.io/you/kimup:0.1.0 .
# VERSION must be Cargo.toml's version (the build checks it against `kimup version`), which is
# also charts/kimup/Chart.yaml's appVersion.

FROM docker.io/library/rust:1.95-bookworm AS build
ARG VERSION
WORKDIR /src
COPY . .
# The target folder and the crate registry live in cache mounts, so the binary is taken out of
# target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eu; \
    [ -n "${VERSION:-}" ] || { echo "pass --build-arg VERSION=<Cargo.toml version>" >&2; exit 1; }; \
    cargo build --release --locked --bin kimup; \
    built="$(target/release/kimup version)"; \
    [ "$built" = "kimup $VERSION" ] || { echo "VERSION=$VERSION, but the binary is $built" >&2; exit 1; }; \
    scripts/image-rootfs.sh target/release/kimup /rootfs

FROM scratch
ARG VERSION
ARG REVISION=""
COPY --from=build /rootfs/ /
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# The chart passes the whole command line (global flags, then `run ...`) as args; a bare
# `docker run` runs the controller too.
ENTRYPOINT ["/kimup"]
CMD ["run"]
LABEL org.opencontainers.image.title="kimup" \
      org.opencontainers.image.description="Kubernetes image updater: watches Image resources across clusters and rolls out new tags" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/kimup/kimup" \
      org.opencontainers.image.licenses="Apache-2.0"
