# GatheRing shortcuts; the README shows the plain cargo commands too.

# Run the service (no DATABASE_URL: a private PostgreSQL cluster under ./.gathering)
run:
    cargo run --release -p gathering-server

# The test suite (needs PostgreSQL; TEST_DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/postgres)
test:
    cargo test --workspace

# What CI runs
ci:
    bash .ci/run

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Criterion micro-benchmarks
bench:
    cargo bench -p gathering-benches

# HTTP load test with wrk against a running release server (see benches/load/README.md)
load:
    bash benches/load/run.sh
