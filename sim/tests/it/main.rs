//! The simulation's tests, in one binary:
//!
//! - [`simulation`]: the head node and the data nodes' decisions under the
//!   faults each seed draws, many seeds at a time (`many_seeds`), one seed
//!   with its whole trace (`replay`), and the same trace for the same seed.

mod simulation;
