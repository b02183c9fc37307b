//! The data node's integration tests, in one binary: `datanode::run` in
//! this process on a temporary directory, driven by a head node the test
//! scripts.
//!
//! - [`client_keys`]: a held key answered with its id and never written
//!   again, the key index across a restart, the report after `welcome`;
//! - [`group_commit`]: a burst that trickles in committed in one write;
//! - [`head_epochs`]: a head node older than the newest seen refused, and
//!   the epoch remembered across a restart;
//! - [`reads`]: `get`, `getkey` and `scan` across segments, and their
//!   bounds;
//! - [`storage_faults`]: a failing disk answered with an error, never with
//!   `recibido`;
//! - [`verify_command`]: `datanode verify` as a process, its summary and
//!   its exit status;
//! - [`support`]: the scripted head node.

mod client_keys;
mod group_commit;
mod head_epochs;
mod reads;
mod storage_faults;
mod support;
mod verify_command;
