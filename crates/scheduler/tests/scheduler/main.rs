//! One test binary for gathering-scheduler's integration tests: each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod scheduler_pg;
