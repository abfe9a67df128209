# Builds both binaries: mfa-reset (the tool and its workers) and graph-sim (the simulator).
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/mfa-reset /src/target/release/graph-sim /usr/local/bin/
COPY config /app/config
COPY examples /app/examples
WORKDIR /app
USER 65534
ENTRYPOINT ["mfa-reset"]
