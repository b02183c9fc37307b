//! Below: the head node's decisions and state, with no sockets and no
//! tasks. Nothing here imports from `tasks`; where a decision depends on
//! time, the time comes in as an argument, so every rule is tested with
//! fabricated instants ([`membership`] is the model).

pub(crate) mod forward;
pub(crate) mod ids;
pub(crate) mod in_flight;
pub(crate) mod keys;
pub mod membership;
pub(crate) mod probe;
pub(crate) mod reads;
pub(crate) mod recovery;
pub(crate) mod repair;
pub(crate) mod reply_window;
pub(crate) mod retained;
pub(crate) mod router;
pub(crate) mod signal;
pub(crate) mod status;
pub(crate) mod tail;
