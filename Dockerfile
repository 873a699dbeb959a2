# Builds the confab binary into a small image. Used by docs/cluster/docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p confab && cp target/release/confab /usr/local/bin/confab

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/confab /usr/local/bin/confab
EXPOSE 8080
ENTRYPOINT ["confab"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/var/lib/confab"]
