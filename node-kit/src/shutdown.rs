//! The shutdown signal of every binary: SIGTERM (what `docker stop` sends) or Ctrl-C.

/// Completes when the process is asked to stop.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received, shutting down"),
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("Ctrl-C received, shutting down");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received, shutting down");
    }
}

/// A shutdown future that can be awaited any number of times: once it has
/// fired, every later wait returns at once.
pub struct Latch<F> {
    signal: std::pin::Pin<Box<F>>,
    fired: bool,
}

impl<F: std::future::Future<Output = ()>> Latch<F> {
    /// Wraps `signal`.
    pub fn new(signal: F) -> Self {
        Latch {
            signal: Box::pin(signal),
            fired: false,
        }
    }

    /// Completes when the signal has fired (now or earlier).
    pub async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }

    /// Whether the signal has fired.
    pub fn fired(&self) -> bool {
        self.fired
    }
}
