# Two images from one build:
#   docker build -t mfa-reset .                      the tool and its workers, WITHOUT the simulator
#   docker build -t graph-sim --target graph-sim .   the Graph simulator (demo, tests, benchmarks)
# The production image is built with --no-default-features: it carries no token issuer that
# accepts a fixed secret.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p mfa-reset --no-default-features --bin mfa-reset \
 && cp target/release/mfa-reset /usr/local/bin/mfa-reset \
 && cargo build --release --locked -p graph-sim --bin graph-sim \
 && cp target/release/graph-sim /usr/local/bin/graph-sim

FROM debian:bookworm-slim AS graph-sim
COPY --from=build /usr/local/bin/graph-sim /usr/local/bin/
USER 65534
ENTRYPOINT ["graph-sim"]

FROM debian:bookworm-slim AS mfa-reset
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/mfa-reset /usr/local/bin/
COPY config /app/config
COPY examples /app/examples
WORKDIR /app
USER 65534
ENTRYPOINT ["mfa-reset"]
