//! The loopback HTTP fake: one implementation for every test, in
//! [`gathering_store::test_support::loopback`] (crate tests below this one use it too).

pub use gathering_store::test_support::loopback::{Answer, Loopback, Request};
