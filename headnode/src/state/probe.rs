//! The heartbeat's ICMP probe as a seam: the membership's rules ask a
//! host whether it answers through this trait, which the ICMP prober
//! (`tasks::prober`) implements and tests and the simulation fake.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use crate::state::membership::ProbeOutcome;

/// Sends one ICMP echo to a host.
pub trait Prober: Send + Sync + 'static {
    /// Pings `addr` once, waiting at most `timeout`. MUST NOT panic and MUST
    /// complete within about `timeout`.
    fn probe(
        &self,
        addr: IpAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + '_>>;
}

/// The address to ping and to name a peer by: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, how a socket bound to `[::]` sees IPv4 peers) becomes
/// the IPv4 address it stands for, which answers ICMPv4, not ICMPv6.
/// Every other address is returned as it is.
pub(crate) fn canonical_ip(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}
