//! One test binary for gathering-llm's integration tests: each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agent_runtime;
mod providers;
