//! The wire protocol's integration tests, in one binary:
//!
//! - [`properties`]: round trips of the codec and of every message, with
//!   generated values;
//! - [`fuzz_replay`]: the saved fuzz inputs through the fuzz targets' own
//!   checks, on a stable toolchain.

mod fuzz_replay;
mod properties;
