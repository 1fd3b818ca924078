# pgtier-app (API + load generator): multi-stage build, small non-root runtime.
# Build from the repository root: docker build -f docker/Dockerfile.app -t pgtier-app .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pgtier-app --bin pgtier-app \
    && install -D target/release/pgtier-app /out/pgtier-app

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /out/pgtier-app /usr/local/bin/pgtier-app
USER 10001:10001
ENV APP_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pgtier-app"]
CMD ["serve"]
