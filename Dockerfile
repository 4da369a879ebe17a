# wsgate container image (docs/deployment.md, "Containers"): build with the Rust image, run on Debian slim.
#
#   docker build -t wsgate .
#   docker run --rm -p 8080:8080 --ulimit nofile=1048576:1048576 wsgate --demo
#
# podman takes the same arguments (scripts/check-container.sh builds and runs this file with podman).
# The default seccomp profiles of Docker 25.0+ and containerd 2.0+ (EPERM) and of podman (ENOSYS) refuse
# io_uring: the gateway then runs on epoll and says so in one log line (`--io uring` refuses to start instead).
# docs/deployment.md gives the sources, what was checked, and how to allow io_uring.

# The workspace's rust-version is 1.89; the toolchain here matches the one CI uses.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wsgate \
 && install -D -m 0755 target/release/wsgate /out/wsgate

FROM debian:bookworm-slim
# The binary links only glibc and libgcc_s, both in the base image.
COPY --from=build /out/wsgate /usr/local/bin/wsgate
COPY docs/deployment/wsgate-container.toml /etc/wsgate/wsgate.toml
RUN useradd --system --no-create-home --shell /usr/sbin/nologin wsgate
USER wsgate
EXPOSE 8080
# The configuration listens on every interface of the container (wsgate's default is 127.0.0.1:8080); flags
# given to `docker run` come after it and win over its keys.
ENTRYPOINT ["/usr/local/bin/wsgate", "--config", "/etc/wsgate/wsgate.toml"]
