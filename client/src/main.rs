//! `client`: drives the echo server or the head node. See `--help`.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use protocol::cli::parse_duration;
use protocol::message::ClientId;
use protocol::telemetry::{self, FileRoute, LogSpec};

/// Client of the message store.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: ServerArgs,
}

/// Flags every subcommand shares; they may come before or after it.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Server to connect to, as HOST:PORT (a host name is resolved again on
    /// every reconnect).
    #[arg(long, env = "SERVER", default_value = "127.0.0.1:5000", global = true)]
    server: String,
    /// Give up once (re)connecting has failed for this long; `store` also
    /// gives up on a message the head node keeps refusing for this long.
    #[arg(long, env = "RETRY_FOR", default_value = "30s", value_parser = parse_duration, global = true)]
    retry_for: Duration,
    /// Directory for registro_cliente.txt (default logs/client; bench writes none).
    #[arg(long, env = "LOG_DIR", global = true)]
    log_dir: Option<PathBuf>,
}

impl ServerArgs {
    fn connect_options(&self) -> client::ConnectOptions {
        let mut connect = client::ConnectOptions::new(self.server.clone(), None);
        connect.retry_for = self.retry_for;
        connect
    }
}

/// The client id flag of `store` and `bench`.
#[derive(Debug, clap::Args)]
struct KeyArgs {
    /// Client id of the message keys (`<client-id>/<seq>`): 1-64 of
    /// A-Z a-z 0-9 . _ -. Default: `c-` and 12 random hex digits.
    #[arg(long, env = "CLIENT_ID")]
    client_id: Option<ClientId>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Activity 1: send `numero random: N` every --interval to the echo
    /// server and log each echo as `Servidor recibio: <reply>`.
    Echo {
        /// Pause between messages.
        #[arg(long, env = "INTERVAL", default_value = "3s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this many messages (default: run until stopped).
        #[arg(long, env = "COUNT")]
        count: Option<u64>,
    },
    /// Activity 2: send `numero random: N` to the head node every --interval,
    /// keyed `<client-id>/<seq>`, and log each answer (`<data-node>+<data-node>
    /// , mensaje: recibido <id> key=<client-id>/<seq>`) to registro_cliente.txt.
    /// Messages refused for lack of data nodes, with an unknown outcome, or
    /// left unanswered by a lost connection, are sent again with the same key.
    Store {
        #[command(flatten)]
        key: KeyArgs,
        /// Pause between messages; 0 sends as fast as --pipeline allows.
        #[arg(long, env = "INTERVAL", default_value = "3s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop once this many messages are answered (default: run until stopped).
        #[arg(long, env = "COUNT")]
        count: Option<u64>,
        /// Messages in flight at once.
        #[arg(long, env = "PIPELINE", default_value_t = 1)]
        pipeline: usize,
        /// Send this text instead of `numero random: N`.
        #[arg(long, env = "MESSAGE", value_parser = non_empty)]
        message: Option<String>,
    },
    /// Load generator: many connections, many messages in flight; prints
    /// msgs/s and latency percentiles, and fails if any reply is wrong.
    Bench(BenchArgs),
    /// Opens many client connections to the head node and holds them idle
    /// (for measuring memory per connection). Prints `READY <n>` when open.
    Idle {
        /// Connections to open.
        #[arg(long, env = "IDLE_CONNECTIONS", default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them.
        #[arg(long, env = "IDLE_HOLD", default_value = "20s", value_parser = parse_duration)]
        hold: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// What to measure: the head node (`store`) or the echo server (`echo`).
    #[arg(long, env = "BENCH_TARGET", value_enum, default_value = "store")]
    target: client::bench::BenchTarget,
    /// Connections at once.
    #[arg(long, short = 'c', env = "BENCH_CONNECTIONS", default_value_t = 50)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'P', env = "BENCH_PIPELINE", default_value_t = 1)]
    pipeline: usize,
    /// Messages in all (default 100000 unless --duration is given).
    #[arg(long, short = 'n', env = "BENCH_COUNT", conflicts_with = "duration")]
    count: Option<u64>,
    /// Run for this long instead of a message count.
    #[arg(long, env = "BENCH_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Payload of this many bytes instead of `numero random: N`.
    #[arg(long, env = "BENCH_PAYLOAD_SIZE", conflicts_with = "message")]
    payload_size: Option<usize>,
    /// Fixed payload text instead of `numero random: N`.
    #[arg(long, env = "BENCH_MESSAGE", value_parser = non_empty)]
    message: Option<String>,
    /// Time at the start that is not measured.
    #[arg(long, env = "BENCH_WARMUP", default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print one JSON object instead of the summary.
    #[arg(long, env = "BENCH_JSON")]
    json: bool,
    /// Threads driving the connections. One (as redis-benchmark's default)
    /// handles a burst of replies in one wake-up; more help only when the
    /// load generator itself is the bottleneck.
    #[arg(long, env = "BENCH_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains('\n') {
        return Err("the message must be one non-empty line".into());
    }
    Ok(text.to_owned())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Command::Bench(bench) = args.command {
        // No log files for a load generator: figures go to stdout.
        return protocol::cli::exit_code("client", run_bench(bench, args.server));
    }
    protocol::cli::exit_code("client", run(args))
}

#[tokio::main]
async fn run(args: Args) -> anyhow::Result<()> {
    let _log_guard = telemetry::init(&LogSpec {
        dir: args
            .server
            .log_dir
            .clone()
            .unwrap_or_else(|| "logs/client".into()),
        files: vec![("registro_cliente.txt", FileRoute::Rest)],
        stdout: true,
    })?;
    let server = args.server;
    match args.command {
        Command::Echo { interval, count } => {
            let config = client::echo::EchoConfig {
                connect: server.connect_options(),
                interval,
                count,
            };
            let summary = client::echo::run(config, protocol::shutdown::signal()).await?;
            tracing::info!(
                echoed = summary.echoed,
                mismatched = summary.mismatched,
                reconnects = summary.reconnects,
                "echo client finished"
            );
            anyhow::ensure!(
                summary.mismatched == 0,
                "{} echoes differed from what was sent",
                summary.mismatched
            );
        }
        Command::Bench(_) => unreachable!("handled before logging is set up"),
        Command::Idle { connections, hold } => {
            let open =
                client::bench::hold_idle(server.connect_options(), connections, hold).await?;
            tracing::info!(open, "idle connections closed");
        }
        Command::Store {
            key,
            interval,
            count,
            pipeline,
            message,
        } => {
            let config = client::store::StoreConfig {
                connect: server.connect_options(),
                client_id: key.client_id,
                interval,
                count,
                pipeline,
                message,
            };
            let summary = client::store::run(config, protocol::shutdown::signal()).await?;
            tracing::info!(
                client_id = %summary.client_id,
                answered = summary.answered,
                failed = summary.failed,
                resent = summary.resent,
                answered_with_earlier_id = summary.answered_with_earlier_id,
                conflicting_ids = summary.conflicting_ids,
                reconnects = summary.reconnects,
                "store client finished"
            );
            anyhow::ensure!(
                summary.conflicting_ids == 0,
                "{} keys were answered with conflicting ids",
                summary.conflicting_ids
            );
            anyhow::ensure!(
                summary.failed == 0,
                "{} messages were refused by the head node",
                summary.failed
            );
        }
    }
    Ok(())
}

fn run_bench(args: BenchArgs, server: ServerArgs) -> anyhow::Result<()> {
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads.into())
            .enable_all()
            .build()
    };
    runtime
        .context("cannot start the async runtime")?
        .block_on(bench(args, server))
}

async fn bench(args: BenchArgs, server: ServerArgs) -> anyhow::Result<()> {
    use client::bench::{BenchConfig, Limit, Payload};
    use std::io::IsTerminal;
    let connect = server.connect_options();
    let payload = match (args.payload_size, args.message) {
        (Some(size), _) => Payload::Fixed(bytes::Bytes::from(vec![b'x'; size.max(1)])),
        (None, Some(text)) => Payload::Fixed(text.into()),
        (None, None) => Payload::Seed,
    };
    let limit = match (args.count, args.duration) {
        (_, Some(duration)) => Limit::Duration(duration),
        (Some(count), None) => Limit::Count(count),
        (None, None) => Limit::Count(100_000),
    };
    let report = client::bench::run(BenchConfig {
        connect,
        client_id: args.key.client_id,
        target: args.target,
        connections: args.connections,
        pipeline: args.pipeline,
        limit,
        payload,
        warmup: args.warmup,
        progress: !args.json && std::io::stderr().is_terminal(),
    })
    .await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    anyhow::ensure!(
        report.errors == 0,
        "{} replies were errors or wrong",
        report.errors
    );
    anyhow::ensure!(report.messages > 0, "no message was measured");
    Ok(())
}
