//! ICMP in the simulation: a host answers unless the scenario has it down
//! (crashed) or cut off (partitioned). A held link stalls TCP only; the
//! host still answers pings, as a stalled connection's host would.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headnode::Prober;
use headnode::membership::ProbeOutcome;

/// Hosts that do not answer ICMP now, set by the scenario.
#[derive(Clone, Default)]
pub struct Unreachable(Arc<Mutex<BTreeSet<IpAddr>>>);

impl Unreachable {
    /// Marks `host` as answering or not.
    pub fn set(&self, host: IpAddr, unreachable: bool) {
        let mut hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if unreachable {
            hosts.insert(host);
        } else {
            hosts.remove(&host);
        }
    }

    fn contains(&self, host: IpAddr) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&host)
    }
}

/// The head node's prober in the simulation.
pub struct SimProber {
    /// Who does not answer.
    pub unreachable: Unreachable,
}

/// Round trip of a simulated echo.
const ECHO_RTT: Duration = Duration::from_millis(2);

impl Prober for SimProber {
    fn probe(
        &self,
        addr: IpAddr,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + '_>> {
        let down = self.unreachable.contains(addr);
        Box::pin(async move {
            if down {
                tokio::time::sleep(timeout).await;
                ProbeOutcome::NoReply
            } else {
                tokio::time::sleep(ECHO_RTT).await;
                ProbeOutcome::Reply(ECHO_RTT)
            }
        })
    }
}
