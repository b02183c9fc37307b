//! Property checks shared by the fuzz targets and the stable replay test.
//!
//! Each `check` takes the raw bytes of one input, returns normally when every
//! property holds, and panics with a message naming the property when one
//! does not. The fuzz targets in `fuzz/fuzz_targets/` call them on generated
//! inputs; `protocol/tests/it/fuzz_replay.rs` calls them on every file under
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.
//!
//! An input is the bytes a peer sends, nothing else, so a hand-written seed
//! such as `peticion\n` means exactly that. What a check needs besides (where
//! the stream is split, which line limit applies, how long the peer pauses)
//! comes from [`rng::Rng`] seeded with a hash of the input: a file always
//! replays the same way.

pub(crate) mod handshake;
pub(crate) mod line_decoder;
pub(crate) mod messages;
mod rng;
