//! `echo-server`: Activity 1's echo server. See `--help`.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use node_kit::cli::{FramingArgs, LogArgs};
use node_kit::telemetry::{self, FileRoute, LogSpec};
use tokio::net::TcpListener;

/// Echo server: answers `peticion` with `confirmacion`, then sends every
/// message back unchanged. One task per client, at most --max-connections
/// at once; one more is refused with `ERROR server full (N connections)`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Clients served at once.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = echo_server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    #[command(flatten)]
    framing: FramingArgs,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    node_kit::cli::exit_code("echo-server", run(args))
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    let _log_guard = telemetry::init(&LogSpec {
        dir: args.log.dir_or("logs/echo-server"),
        files: vec![("log.txt", FileRoute::Rest)],
        stdout: true,
    })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = echo_server::Config {
        max_connections: args.max_connections,
        reader: args.framing.reader_config(),
        handshake_timeout: args.framing.handshake_timeout,
        ..echo_server::Config::default()
    };
    echo_server::run(listener, config, node_kit::shutdown::signal()).await?;
    Ok(())
}
