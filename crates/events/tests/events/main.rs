//! One test binary for gathering-events' integration tests: each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bus;
mod pg_fanout;
