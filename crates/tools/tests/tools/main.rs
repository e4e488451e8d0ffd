//! One test binary for gathering-tools' integration tests: each former `tests/*.rs` file is a module here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod builtins;
mod http_request;
mod properties;
mod support;
