//! `datanode`: a data node of the message store. See `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use datanode::FsyncPolicy;
use datanode::storage::{self, DATA_FILE};
use node_kit::cli::{LogArgs, TokenArgs, parse_duration, parse_timeout};
use node_kit::telemetry::{self, FileRoute, LogSpec};
use protocol::ids::{NodeId, Zone};

/// Data node: registers with the head node, appends every message it is sent
/// to data.txt (`<timestamp> - [<message-id>] crc32c=<checksum> mensaje:
/// <text>`) and answers `recibido <id>` once the line is written. Reconnects
/// with backoff forever when the head node goes away; on SIGTERM it leaves
/// the cluster cleanly.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Checks a data directory (its segments and data.txt) or one data
    /// file: torn lines, checksum mismatches, ids stored twice.
    ///
    /// Reads only, so it can check the file of a running node. Prints a
    /// summary and the first problems. Exit status 0 when clean, 1 when it
    /// found problems, 2 when the file cannot be read.
    Verify {
        /// The data directory (or the data.txt itself).
        #[arg(env = "DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Compares every acknowledgement clients logged with every data node's
    /// data files, by message id: lost, phantom holders (named by an
    /// answer, without its id under its key), keys with two ids,
    /// mismatched copies, under- and over-replicated, duplicated and
    /// unacknowledged ids.
    ///
    /// Prints one `key=value` summary line and the first problems. Exit
    /// status 0 when every answer's id is stored, under its key, on every
    /// node it names, each key has one id and the copies of each id agree
    /// (and, with --strict, each has --replicas copies), 1 otherwise, 2
    /// when a file cannot be read.
    Audit {
        /// A client's log (registro_cliente.txt); repeat for each client.
        #[arg(long = "client-log", required = true)]
        client_logs: Vec<PathBuf>,
        /// Copies every message should have (the head node's --replicas).
        #[arg(long, env = "REPLICAS", default_value_t = 2,
              value_parser = clap::value_parser!(u8).range(1..))]
        replicas: u8,
        /// A data directory whose contents were lost (a wiped disk); copies
        /// missing because of it are counted apart. Repeat for each.
        #[arg(long = "lost-dir")]
        lost_dirs: Vec<PathBuf>,
        /// Fail when an acknowledged message has fewer than --replicas
        /// copies for a reason other than a lost directory.
        #[arg(long)]
        strict: bool,
        /// Data directories; each directory's name is its node's id.
        #[arg(required = true)]
        data_dirs: Vec<PathBuf>,
    },
}

/// Running the node.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Head node to register with, as HOST:PORT.
    #[arg(long, env = "HEADNODE", default_value = "headnode:5000")]
    headnode: String,
    /// This node's name (1-64 of A-Z a-z 0-9 . _ -). Default: the host name.
    #[arg(long, env = "NODE_ID")]
    node_id: Option<NodeId>,
    /// This node's failure domain (a host, rack or zone; 1-64 of A-Z a-z 0-9
    /// . _ -): the head node puts the copies of one message in distinct
    /// zones. Default: the host name.
    #[arg(long, env = "ZONE")]
    zone: Option<Zone>,
    /// Client keys remembered to recognise resends, at most (rebuilt from
    /// data.txt at start and reported to each head node).
    #[arg(long, env = "DEDUP_KEYS", default_value_t = datanode::keys::DEFAULT_DEDUP_KEYS as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    dedup_keys: u64,
    /// How long after its record is written a client key is remembered at
    /// least, while --dedup-keys allows (at most about twice this).
    #[arg(long, env = "DEDUP_WINDOW", default_value = "2m", value_parser = parse_timeout)]
    dedup_window: Duration,
    /// Directory of data.txt. Default: ./logs/datanode-<node-id>.
    #[arg(long, env = "DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// data.txt is renamed to the next numbered segment beside it
    /// (data.000001.txt, ...) and started anew once it is this long
    /// (1MiB to 64GiB; units B, KiB, MiB, GiB).
    #[arg(long, env = "SEGMENT_BYTES", default_value = "128MiB",
          value_parser = datanode::storage::store::parse_segment_bytes)]
    segment_bytes: u64,
    /// Remove a whole segment once its newest record is older than this
    /// (7d, 12h, 30m). The active data.txt is never removed. Default: off.
    #[arg(long, env = "RETENTION_AGE", value_parser = datanode::storage::store::parse_age)]
    retention_age: Option<Duration>,
    /// Remove the oldest segments while all data files together (segments
    /// and data.txt) are larger than this (units B, KiB, MiB, GiB, TiB).
    /// Default: off.
    #[arg(long, env = "RETENTION_BYTES", value_parser = datanode::storage::store::parse_bytes)]
    retention_bytes: Option<u64>,
    /// When written messages are forced to disk: `always` (each message),
    /// `batch` (one fsync for all messages written together, before any is
    /// acknowledged) or `never` (left to the OS).
    #[arg(long, env = "FSYNC", default_value = "batch")]
    fsync: FsyncPolicy,
    /// Under `batch`: how long a batch smaller than the one before may wait
    /// for the rest of its burst before its fsync (0 never waits).
    #[arg(long, env = "COMMIT_LINGER", default_value = "400us", value_parser = parse_duration)]
    commit_linger: Duration,
    #[command(flatten)]
    token: TokenArgs,
    /// Without a cluster token, join a head node that accepts data nodes
    /// without one. Neither side is then authenticated.
    #[arg(long, env = "OPEN_REGISTRATION")]
    open_registration: bool,
    /// Reconnect when the head node has sent nothing, not even a heartbeat, for this long.
    #[arg(long, env = "HEAD_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    head_timeout: Duration,
    /// Longest reconnect delay (delays start at 200ms and double, with
    /// jitter). Short: a restarted head node serves clients only once the
    /// data nodes of its predecessor have come back, and there are few of
    /// them (at most 64).
    #[arg(long, env = "MAX_BACKOFF", default_value = "1s", value_parser = parse_timeout)]
    max_backoff: Duration,
    /// Local IP address to connect from (on hosts with several).
    #[arg(long, env = "SOURCE_IP")]
    source_ip: Option<std::net::IpAddr>,
    /// Address of the HTTP port serving /metrics (Prometheus) and /healthz,
    /// or `off` (the default) for none.
    #[arg(long, env = "HTTP_LISTEN", default_value = "off", value_parser = node_kit::cli::parse_listen_or_off)]
    http_listen: node_kit::cli::OptionalListen,
    /// Longest accepted message text, in bytes.
    #[arg(long, env = "MAX_LINE_BYTES", default_value_t = protocol::DEFAULT_MAX_LINE)]
    max_line: usize,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Verify { data_dir }) => verify(&data_dir),
        Some(Command::Audit {
            client_logs,
            replicas,
            lost_dirs,
            strict,
            data_dirs,
        }) => audit(
            &datanode::audit::AuditConfig {
                client_logs,
                data_dirs,
                lost_dirs,
                replicas: replicas.into(),
            },
            strict,
        ),
        None => node_kit::cli::exit_code("datanode", run(args.node)),
    }
}

/// Problems printed under the summary; the rest are only counted.
const PROBLEMS_SHOWN: usize = 10;

fn audit(config: &datanode::audit::AuditConfig, strict: bool) -> ExitCode {
    let report = match datanode::audit::audit(config) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("datanode audit: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    for (kind, count) in &report.client_errors {
        println!("  client error {kind:?}: {count}");
    }
    for message in report.lost.iter().take(PROBLEMS_SHOWN) {
        println!("  lost: {message} was acknowledged and is in no data file");
    }
    for (message, id, node) in report.phantom_holders.iter().take(PROBLEMS_SHOWN) {
        println!(
            "  phantom holder: {message} was answered {id} naming {node}, whose files lack that id under that key"
        );
    }
    for (key, ids) in report.keys_with_two_ids.iter().take(PROBLEMS_SHOWN) {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        println!("  two ids: key {key} is under ids {}", ids.join(", "));
    }
    for id in report.mismatched_copies.iter().take(PROBLEMS_SHOWN) {
        println!("  mismatched copies: the copies of {id} differ in key or text");
    }
    for (message, copies) in report.under_replicated.iter().take(PROBLEMS_SHOWN) {
        println!(
            "  under-replicated: {message} has {copies} of {} copies",
            report.replicas
        );
    }
    for (message, copies) in report.under_replicated_dir_lost.iter().take(PROBLEMS_SHOWN) {
        println!(
            "  under-replicated (dir lost): {message} has {copies} of {} copies",
            report.replicas
        );
    }
    for (message, node, times) in report.duplicated.iter().take(PROBLEMS_SHOWN) {
        println!("  duplicated: {message} is {times} times in {node}'s data file");
    }
    if report.passes(strict) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn verify(data_dir: &Path) -> ExitCode {
    let (path, report) = if data_dir.is_dir() {
        (data_dir.join(DATA_FILE), storage::verify_dir(data_dir))
    } else {
        (data_dir.to_owned(), storage::verify(data_dir))
    };
    let report = match report {
        Ok(report) => report,
        Err(e) => {
            eprintln!("datanode verify: {e}");
            return ExitCode::from(2);
        }
    };
    if report.files.len() > 1 {
        let files = report.files.len();
        println!("{} ({files} files): {report}", data_dir.display());
    } else {
        println!("{}: {report}", path.display());
    }
    let mut problems = report.problems();
    for problem in problems.by_ref().take(PROBLEMS_SHOWN) {
        println!("  {problem}");
    }
    let more = problems.count();
    if more > 0 {
        println!("  ... and {more} more");
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let node_id = match args.node_id {
        Some(id) => id,
        None => host_name_id()?,
    };
    // Without a usable host name, each node is its own failure domain.
    let zone = args
        .zone
        .or_else(|| host_name().parse().ok())
        .or_else(|| node_id.as_str().parse().ok());
    // Before logging starts, so a bad token file is one clear line.
    let token = args.token.load()?;
    let mut config = datanode::Config::new(args.headnode, node_id);
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let log_dir = args.log.dir_or(&config.data_dir);
    let _log_guard = telemetry::init(&LogSpec {
        dir: log_dir,
        files: vec![("registro_datanode.txt", FileRoute::Rest)],
        stdout: true,
    })?;
    config.zone = zone;
    config.dedup_keys = args.dedup_keys as usize;
    config.dedup_window = args.dedup_window;
    config.fsync = args.fsync;
    config.store = datanode::storage::store::StoreConfig {
        segment_bytes: args.segment_bytes,
        retention: datanode::storage::retention::RetentionPolicy {
            max_age: args.retention_age,
            max_bytes: args.retention_bytes,
        },
    };
    config.commit_linger = args.commit_linger;
    config.cluster_token = token;
    config.open_registration = args.open_registration;
    config.head_timeout = args.head_timeout;
    config.max_backoff = args.max_backoff;
    config.max_line = args.max_line;
    config.source_ip = args.source_ip;
    match args.http_listen.0 {
        Some(addr) => {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
            datanode::run_with_http(config, http, node_kit::shutdown::signal()).await?;
        }
        None => datanode::run(config, node_kit::shutdown::signal()).await?,
    }
    Ok(())
}

/// The host name (in a container: the container's), with every character
/// a name may not hold replaced by `-`, cut to 64 characters; empty if it
/// cannot be read.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    raw.trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// The host name as a node id.
fn host_name_id() -> anyhow::Result<NodeId> {
    let name = host_name();
    name.parse().map_err(|_| {
        anyhow::anyhow!("cannot derive a node id from the host name {name:?}; pass --node-id")
    })
}
