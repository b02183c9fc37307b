//! `headnode`: the head node of the message store. See `--help`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_kit::cli::{
    FramingArgs, LogArgs, TokenArgs, parse_bytes, parse_duration, parse_listen_or_off,
    parse_period, parse_timeout,
};
use node_kit::telemetry::{self, FileRoute, HEARTBEAT_TARGET, LogSpec};
use tokio::net::TcpListener;

/// Head node: clients (role `cliente`) and data nodes (role `dataNode`)
/// connect to one port. Each client message goes to a live data node chosen
/// at random; the client is answered once that node has written it. Dead,
/// hung and unreachable data nodes are detected and evicted, and whatever
/// they held is resent to the others.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:5000")]
    listen: SocketAddr,
    /// Address of the operator's HTTP port: the status page at `/`,
    /// `/status.json`, `/events`, `/metrics` (Prometheus) and `/healthz`.
    /// `off` serves none. Loopback by default: nothing there is secret, but
    /// it is for the operator, not the network.
    #[arg(long, env = "HTTP_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen_or_off)]
    http_listen: node_kit::cli::OptionalListen,
    #[command(flatten)]
    token: TokenArgs,
    /// Also accept data nodes that cannot prove the cluster token, including
    /// original-system (Python) data nodes. Anyone who can reach the port can
    /// then register as a data node: use only on a trusted network.
    #[arg(long, env = "OPEN_REGISTRATION")]
    open_registration: bool,
    /// Period of the ICMP heartbeat rounds.
    #[arg(long, env = "PING_INTERVAL", default_value = "5s", value_parser = parse_period)]
    ping_interval: Duration,
    /// How long one ICMP echo may take before it counts as missed.
    #[arg(long, env = "PING_TIMEOUT", default_value = "1s", value_parser = parse_timeout)]
    ping_timeout: Duration,
    /// ICMP rounds a data node may miss in a row before it is evicted (one
    /// is enough if its heartbeat is silent too). When no data node answers
    /// this many rounds while every heartbeat does, ICMP is taken to be
    /// filtered and evicts no one until a host answers again.
    #[arg(long, env = "PING_MISSES", default_value_t = headnode::DetectorConfig::default().ping_misses,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    ping_misses: u32,
    /// Period of the application heartbeat on each data-node connection.
    #[arg(long, env = "HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_period)]
    heartbeat_interval: Duration,
    /// Heartbeat silence after which a data node is suspect (gets no new messages).
    #[arg(long, env = "SUSPECT_AFTER", default_value = "2s", value_parser = parse_timeout)]
    suspect_after: Duration,
    /// Further silence after which a suspect data node is evicted as hung
    /// (or as unreachable, if its host stopped answering ping too).
    #[arg(long, env = "HUNG_GRACE", default_value = "3s", value_parser = parse_duration)]
    hung_grace: Duration,
    /// A message not acknowledged within this time is resent to another data node.
    #[arg(long, env = "ACK_TIMEOUT", default_value = "2s", value_parser = parse_timeout)]
    ack_timeout: Duration,
    /// How long a message waits for a data node to appear before the client
    /// gets `ERROR no data nodes available`.
    #[arg(long, env = "NO_NODE_WAIT", default_value = "1s", value_parser = parse_timeout)]
    no_node_wait: Duration,
    /// Data nodes tried for one message before the client gets an error.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Connections served at once, clients and data nodes together; lowered
    /// to fit the open-file limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(4..))]
    max_connections: u32,
    /// Connections reserved for data nodes within --max-connections.
    #[arg(long, env = "MAX_DATA_NODES", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_data_nodes: u32,
    /// Unanswered messages per client before the head node stops reading from it.
    #[arg(long, env = "MAX_CLIENT_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_client_in_flight: u32,
    /// Bytes of messages (text plus 256 bytes each) the head node holds at
    /// once over all clients; clients are not read while it is used up.
    #[arg(long, env = "IN_FLIGHT_BUDGET", default_value = "32MiB", value_parser = parse_bytes)]
    in_flight_budget: usize,
    /// Bytes of messages one client may have in flight before it is read no
    /// further, so a heavy client cannot fill the data nodes' queues ahead
    /// of everyone else.
    #[arg(long, env = "MAX_CLIENT_IN_FLIGHT_BYTES", default_value = "512KiB", value_parser = parse_bytes)]
    max_client_in_flight_bytes: usize,
    /// A client that sends nothing for this long, with nothing in flight, is disconnected.
    #[arg(long, env = "CLIENT_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_timeout)]
    client_idle_timeout: Duration,
    /// A peer whose socket takes none of our bytes for this long is disconnected.
    #[arg(long, env = "WRITE_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    write_timeout: Duration,
    /// Messages in a row sent to one randomly chosen data node while it is
    /// still busy, so they share its group commit; 1 routes every message
    /// on its own.
    #[arg(long, env = "STICKY_RUN", default_value_t = headnode::DEFAULT_STICKY_RUN as u32,
          value_parser = clap::value_parser!(u32).range(1..))]
    sticky_run: u32,
    /// Reader (`lector`) connections at once (`client get`, `client tail`).
    #[arg(long, env = "MAX_READERS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    max_readers: u32,
    /// Read requests served at once over all readers.
    #[arg(long, env = "MAX_READS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    max_reads: u32,
    /// Accepted and ignored: a tail no longer waits a time, it stops below
    /// the lowest id still on its way (kept so older command lines run).
    #[arg(long, env = "TAIL_LAG", value_parser = parse_timeout, hide = true)]
    tail_lag: Option<Duration>,
    /// Repair gives messages their missing copies once a data node has been
    /// gone this long (or came back with a new data directory, or this long
    /// after the head node starts).
    #[arg(long, env = "REPAIR_AFTER", default_value = "30s", value_parser = parse_timeout)]
    repair_after: Duration,
    /// Messages repair gives new copies to per second, at most.
    #[arg(long, env = "REPAIR_RATE", default_value_t = headnode::config::DEFAULT_REPAIR_RATE,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    repair_rate: u32,
    /// How long a data node has to answer one read (a whole scan page).
    #[arg(long, env = "READ_TIMEOUT", default_value = "5s", value_parser = parse_timeout)]
    read_timeout: Duration,
    /// Copies of each message, on distinct data nodes (distinct zones when
    /// there are enough).
    #[arg(long, env = "REPLICAS", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=headnode::config::MAX_REPLICAS as i64))]
    replicas: u8,
    /// Copies written and synced before the client is answered: a number,
    /// or `all` (the default: every one of --replicas); the rest complete in
    /// the background.
    #[arg(long, env = "MIN_REPLICAS", default_value = "all", value_parser = parse_min_replicas)]
    min_replicas: MinReplicas,
    /// Client keys remembered to recognise resends, at most.
    #[arg(long, env = "DEDUP_KEYS", default_value_t = headnode::config::DEFAULT_DEDUP_KEYS as u64,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    dedup_keys: u64,
    /// How long a client key is remembered at least, while --dedup-keys
    /// allows (at most about twice this).
    #[arg(long, env = "DEDUP_WINDOW", default_value = "2m", value_parser = parse_timeout)]
    dedup_window: Duration,
    /// After a start, how long to wait for the data nodes the previous head
    /// node had before serving clients anyway.
    #[arg(long, env = "RECOVERY_WAIT", default_value = "5s", value_parser = parse_timeout)]
    recovery_wait: Duration,
    #[command(flatten)]
    framing: FramingArgs,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Exits 0 if a head node answers the handshake at --addr (for container health checks).
    Health {
        /// The head node to check.
        #[arg(long, env = "HEALTH_ADDR", default_value = "127.0.0.1:5000")]
        addr: String,
        /// Give up after this long.
        #[arg(long, env = "HEALTH_TIMEOUT", default_value = "2s", value_parser = parse_timeout)]
        timeout: Duration,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match &args.command {
        Some(Command::Health { addr, timeout }) => health(addr, *timeout),
        None => serve(args),
    };
    node_kit::cli::exit_code("headnode", result)
}

#[tokio::main(flavor = "current_thread")]
async fn health(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    let check = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let mut conn = protocol::Connection::connect(stream, 1024)?;
        protocol::handshake::initiate(&mut conn.reader, &mut conn.writer, None, timeout).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {timeout:?}"))?
        .with_context(|| format!("head node at {addr} is not healthy"))
}

#[tokio::main(flavor = "current_thread")]
async fn serve(args: Args) -> anyhow::Result<()> {
    // Before logging starts, so a bad token file is one clear line.
    let token = args.token.load()?;
    let _log_guard = telemetry::init(&LogSpec {
        dir: args.log.dir_or("logs/headnode"),
        files: vec![
            ("registro_server.txt", FileRoute::Rest),
            ("heartbeat_server.txt", FileRoute::Target(HEARTBEAT_TARGET)),
        ],
        stdout: true,
    })?;
    if let Some(lag) = args.tail_lag {
        tracing::warn!(
            ?lag,
            "--tail-lag is ignored: a tail stops below the lowest message id still on its way, whatever the clocks say"
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = headnode::Config {
        reader: args.framing.reader_config(),
        handshake_timeout: args.framing.handshake_timeout,
        cluster_token: token,
        open_registration: args.open_registration,
        ping_interval: args.ping_interval,
        ping_timeout: args.ping_timeout,
        detector: headnode::DetectorConfig {
            ping_misses: args.ping_misses,
            suspect_after: args.suspect_after,
            hung_grace: args.hung_grace,
        },
        heartbeat_interval: args.heartbeat_interval,
        ack_timeout: args.ack_timeout,
        no_node_wait: args.no_node_wait,
        max_attempts: args.max_attempts,
        max_connections: args.max_connections as usize,
        max_data_nodes: args.max_data_nodes as usize,
        max_client_in_flight: args.max_client_in_flight as usize,
        in_flight_budget: args.in_flight_budget,
        max_client_in_flight_bytes: args.max_client_in_flight_bytes,
        client_idle_timeout: args.client_idle_timeout,
        write_timeout: args.write_timeout,
        sticky_run: args.sticky_run as usize,
        max_readers: args.max_readers as usize,
        max_reads: args.max_reads as usize,
        read_timeout: args.read_timeout,
        repair_after: args.repair_after,
        repair_rate: args.repair_rate,
        replicas: usize::from(args.replicas),
        min_replicas: match args.min_replicas {
            MinReplicas::All => usize::from(args.replicas),
            MinReplicas::Count(n) => usize::from(n),
        },
        dedup_keys: args.dedup_keys as usize,
        dedup_window: args.dedup_window,
        recovery_wait: args.recovery_wait,
        ..headnode::Config::default()
    };
    match args.http_listen.0 {
        Some(addr) => {
            let http = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            headnode::run_with_http(listener, http, config, node_kit::shutdown::signal()).await?;
        }
        None => headnode::run(listener, config, node_kit::shutdown::signal()).await?,
    }
    Ok(())
}

/// `--min-replicas`: `all` of `--replicas`, or a count.
#[derive(Debug, Clone, Copy)]
enum MinReplicas {
    All,
    Count(u8),
}

fn parse_min_replicas(s: &str) -> Result<MinReplicas, String> {
    // An empty value (`MIN_REPLICAS=` in a compose file) means the default.
    if s.is_empty() || s == "all" {
        return Ok(MinReplicas::All);
    }
    match s.parse::<u8>() {
        Ok(n) if (1..=headnode::config::MAX_REPLICAS).contains(&usize::from(n)) => {
            Ok(MinReplicas::Count(n))
        }
        _ => Err(format!(
            "expected `all` or a number from 1 to {}",
            headnode::config::MAX_REPLICAS
        )),
    }
}
