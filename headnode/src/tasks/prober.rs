//! ICMP echo for the heartbeat, behind a trait so tests can make a ping fail.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use crate::state::membership::ProbeOutcome;
use crate::state::probe::{Prober, canonical_ip};

/// ICMP through surge-ping: one shared socket, an increasing sequence number
/// per host. Uses an unprivileged ICMP socket where
/// `net.ipv4.ping_group_range` allows it, else a raw socket (CAP_NET_RAW).
/// If neither is permitted, every probe is [`ProbeOutcome::Unavailable`].
pub struct IcmpProber {
    v4: Option<surge_ping::Client>,
    v6: Option<surge_ping::Client>,
    next_seq: Mutex<HashMap<IpAddr, u16>>,
    identifier: u16,
}

impl IcmpProber {
    /// Opens the ICMP sockets, with an identifier drawn from the operating
    /// system. Must run inside a tokio runtime. Logs once, clearly, when
    /// ICMP cannot be used.
    pub fn new() -> Self {
        IcmpProber::with_identifier(rand::random())
    }

    /// [`IcmpProber::new`] with the echo identifier `identifier`: the head
    /// node draws it from its seeded generator, so a seeded run repeats it.
    pub fn with_identifier(identifier: u16) -> Self {
        let v4 = match surge_ping::Client::new(&surge_ping::Config::default()) {
            Ok(client) => Some(client),
            Err(error) => {
                tracing::warn!(
                    target: node_kit::telemetry::HEARTBEAT_TARGET,
                    %error,
                    "ICMP unavailable (needs net.ipv4.ping_group_range to include this group, or CAP_NET_RAW); \
                     relying on connection loss and the application heartbeat to detect failures"
                );
                None
            }
        };
        let v6_config = surge_ping::Config::builder()
            .kind(surge_ping::ICMP::V6)
            .build();
        let v6 = surge_ping::Client::new(&v6_config).ok();
        IcmpProber {
            v4,
            v6,
            next_seq: Mutex::new(HashMap::new()),
            identifier,
        }
    }

    fn next_seq(&self, addr: IpAddr) -> u16 {
        let mut seqs = self
            .next_seq
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seq = seqs.entry(addr).or_insert(0);
        *seq = seq.wrapping_add(1);
        *seq
    }
}

impl Default for IcmpProber {
    fn default() -> Self {
        IcmpProber::new()
    }
}

impl Prober for IcmpProber {
    fn probe(
        &self,
        addr: IpAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + '_>> {
        let addr = canonical_ip(addr);
        Box::pin(async move {
            let client = match addr {
                IpAddr::V4(_) => self.v4.as_ref(),
                IpAddr::V6(_) => self.v6.as_ref(),
            };
            let Some(client) = client else {
                return ProbeOutcome::Unavailable;
            };
            let seq = self.next_seq(addr);
            let mut pinger = client
                .pinger(addr, surge_ping::PingIdentifier(self.identifier))
                .await;
            pinger.timeout(timeout);
            match pinger
                .ping(surge_ping::PingSequence(seq), b"heartbeat")
                .await
            {
                Ok((_, rtt)) => ProbeOutcome::Reply(rtt),
                Err(surge_ping::SurgeError::Timeout { .. }) => ProbeOutcome::NoReply,
                Err(surge_ping::SurgeError::IOError(error))
                    if error.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    tracing::debug!(target: node_kit::telemetry::HEARTBEAT_TARGET, %addr, %error, "ping not permitted");
                    ProbeOutcome::Unavailable
                }
                // Two probes of one host at once cannot be told apart; no verdict.
                Err(surge_ping::SurgeError::IdenticalRequests { .. }) => ProbeOutcome::Unavailable,
                Err(error) => {
                    // Unreachable network, no route: the host is not answering.
                    tracing::debug!(target: node_kit::telemetry::HEARTBEAT_TARGET, %addr, %error, "ping failed");
                    ProbeOutcome::NoReply
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_addresses_are_pinged_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn other_addresses_are_kept() {
        for addr in ["10.1.2.3", "::1", "fd00::2", "::", "64:ff9b::a01:203"] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(canonical_ip(addr), addr);
        }
    }

    #[tokio::test]
    async fn mapped_loopback_answers_ping_like_ipv4_loopback() {
        let prober = IcmpProber::new();
        let timeout = Duration::from_secs(1);
        let v4 = prober.probe("127.0.0.1".parse().unwrap(), timeout).await;
        if !matches!(v4, ProbeOutcome::Reply(_)) {
            println!("skipped: ICMP to 127.0.0.1 gives {v4:?} here");
            return;
        }
        let mapped = prober
            .probe("::ffff:127.0.0.1".parse().unwrap(), timeout)
            .await;
        assert!(matches!(mapped, ProbeOutcome::Reply(_)), "{mapped:?}");
    }
}
