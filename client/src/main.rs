//! `client`: drives the echo server or the head node. See `--help`.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use node_kit::cli::{parse_duration, parse_period};
use node_kit::telemetry::{self, FileRoute, LogSpec};
use protocol::ids::{ClientId, MessageId, MessageKey};

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
    /// Shows the cluster as the head node sees it: each data node's state,
    /// heartbeat, messages and last eviction, the message rate and the
    /// totals, read from the head node's HTTP port (/status.json).
    Status {
        /// The head node's HTTP port, as HOST:PORT.
        #[arg(long, env = "STATUS_HTTP", default_value = "127.0.0.1:8080")]
        http: String,
        /// Print the JSON snapshot instead of the table.
        #[arg(long)]
        json: bool,
        /// Refresh every interval (default 2s) until Ctrl-C.
        #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
              value_parser = parse_period)]
        watch: Option<Duration>,
    },
    /// Reads one stored message back, by id or by client key: prints its
    /// text, the live data nodes that hold it and when it was stored.
    ///
    /// Exit status: 0 found; 1 not found (every data node that could hold
    /// it answered that it does not); 3 unavailable: not found on the data
    /// nodes that answered, and one that could hold it did not (retryable:
    /// ask again later); 2 a usage or any other error.
    #[command(
        after_help = "Exit status: 0 found, 1 not found, 3 unavailable (a data node that could hold it did not answer; retryable), 2 usage or other error."
    )]
    Get(GetArgs),
    /// Prints every stored message once, in id order, merged over the live
    /// data nodes: `<id> <stored UTC> <key>|- <text>`. While a data node
    /// that could hold the next messages cannot be read, the head node
    /// answers `incomplete` and the tail asks again with backoff (for
    /// --retry-for, or until Ctrl-C with --follow), printing nothing twice
    /// and skipping nothing; exit status 3 if it gives up.
    Tail(TailArgs),
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
#[command(group(clap::ArgGroup::new("wanted").required(true).args(["id", "key"])))]
struct GetArgs {
    /// The message id (`<epoch>-<seq>`), as in `recibido <id>`.
    id: Option<MessageId>,
    /// A client key instead, `<client-id>/<seq>` (found within the data
    /// nodes' deduplication window only).
    #[arg(long)]
    key: Option<MessageKey>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct TailArgs {
    /// Start after this message id.
    #[arg(long, conflicts_with = "since")]
    from: Option<MessageId>,
    /// Only messages stored since this time: Unix ms, a UTC time
    /// (2026-11-24T10:00:00Z) or a duration ago (10m).
    #[arg(long)]
    since: Option<String>,
    /// Keep printing new messages as they are stored, until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Pause between polls while following.
    #[arg(long, default_value = "200ms", value_parser = parse_period)]
    poll: Duration,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    key: KeyArgs,
    /// What to measure: the head node's writes (`store`), the echo server
    /// (`echo`), or the head node's reads (`get`: `get <id>` over reader
    /// connections, of the oldest 1000 stored messages in turn; at most 16
    /// in flight per connection).
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
    if let Command::Status { http, json, watch } = &args.command {
        // No log files: the status goes to stdout.
        return node_kit::cli::exit_code("client", show_status(http, *json, *watch));
    }
    if let Command::Get(get) = &args.command {
        // No log files: the message goes to stdout.
        return read_exit(read_one(get, &args.server), 2);
    }
    if let Command::Tail(tail) = &args.command {
        return read_exit(read_all(tail, &args.server), 1);
    }
    if let Command::Bench(bench) = args.command {
        // No log files for a load generator: figures go to stdout.
        return node_kit::cli::exit_code("client", run_bench(bench, args.server));
    }
    node_kit::cli::exit_code("client", run(args))
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
            let summary = client::echo::run(config, node_kit::shutdown::signal()).await?;
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
        Command::Bench(_) | Command::Status { .. } | Command::Get(_) | Command::Tail(_) => {
            unreachable!("handled before logging is set up")
        }
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
            let summary = client::store::run(config, node_kit::shutdown::signal()).await?;
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

/// Exit status of `client get` when the message is not found.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit status of `client get` and `client tail` when a data node that
/// could hold the answer did not answer: retryable.
const EXIT_UNAVAILABLE: u8 = 3;

/// The exit status of a read: 0, [`EXIT_NOT_FOUND`], [`EXIT_UNAVAILABLE`],
/// or `other` for any other error; the error on one line of stderr.
fn read_exit(result: anyhow::Result<()>, other: u8) -> std::process::ExitCode {
    let Err(e) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    eprintln!("client: {e:#}");
    let code = match e.downcast_ref::<client::read::ReadError>() {
        Some(client::read::ReadError::NotFound { .. }) => EXIT_NOT_FOUND,
        Some(client::read::ReadError::Unavailable(_)) => EXIT_UNAVAILABLE,
        _ => other,
    };
    std::process::ExitCode::from(code)
}

#[tokio::main(flavor = "current_thread")]
async fn read_one(args: &GetArgs, server: &ServerArgs) -> anyhow::Result<()> {
    let wanted = match (&args.id, &args.key) {
        (Some(id), _) => client::read::Wanted::Id(*id),
        (None, Some(key)) => client::read::Wanted::Key(key.clone()),
        (None, None) => anyhow::bail!("give a message id or --key <client-id>/<seq>"),
    };
    let found = client::read::get(&server.connect_options(), &wanted).await?;
    if args.json {
        println!("{}", client::read::to_json(&found));
    } else {
        print!("{}", client::read::describe(&found));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn read_all(args: &TailArgs, server: &ServerArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = client::read::TailOptions::new(server.connect_options());
    options.after = args.from;
    options.since_ms = args
        .since
        .as_deref()
        .map(|since| client::read::parse_since(since, std::time::SystemTime::now()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    options.follow = args.follow;
    options.poll = args.poll;
    let stdout = std::io::stdout();
    let json = args.json;
    let tailed = client::read::tail(
        &options,
        |found| {
            let mut out = stdout.lock();
            if json {
                writeln!(out, "{}", client::read::to_json(found))?;
            } else {
                writeln!(out, "{}", client::read::tail_line(found))?;
            }
            out.flush()
        },
        node_kit::shutdown::signal(),
    )
    .await;
    match tailed {
        // Whoever read the output stopped (`| head`): done, as in `cat`.
        Err(client::read::ReadError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(())
        }
        other => other.map(drop).map_err(Into::into),
    }
}

/// How long one status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main(flavor = "current_thread")]
async fn show_status(http: &str, json: bool, watch: Option<Duration>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let Some(every) = watch else {
        if json {
            println!(
                "{}",
                client::status::fetch_json(http, STATUS_TIMEOUT).await?
            );
        } else {
            print!(
                "{}",
                client::status::render(&client::status::fetch(http, STATUS_TIMEOUT).await?)
            );
        }
        return Ok(());
    };
    let stop = node_kit::shutdown::signal();
    tokio::pin!(stop);
    loop {
        let shown = if json {
            client::status::fetch_json(http, STATUS_TIMEOUT)
                .await
                .map(|j| j + "\n")
        } else {
            client::status::fetch(http, STATUS_TIMEOUT)
                .await
                .map(|s| client::status::render(&s))
        };
        let text = shown.unwrap_or_else(|e| format!("{e}\n"));
        // Home and clear the screen, then the new table: refreshed in place.
        print!("\x1b[H\x1b[2J{text}\n(every {every:?}; Ctrl-C to stop)\n");
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
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
