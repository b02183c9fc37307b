//! A cluster in one process: a head node, real data nodes writing to
//! temporary directories, and a fake ICMP prober; and the client
//! connections the areas drive it with. Data nodes scripted by hand are
//! test-support's `scripted_node`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use headnode::membership::{Event, ProbeOutcome};
use headnode::{Config, Prober, RunError};
use protocol::client::StoreReply;
use protocol::connection::Connection;
use protocol::handshake;
use protocol::ids::MessageId;
use test_support::framed;
use test_support::scripted_node::test_token;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// ICMP that answers for every host except those marked down.
#[derive(Default)]
pub(crate) struct FakeProber {
    down: Mutex<HashSet<IpAddr>>,
    /// As if ICMP were filtered: no host answers.
    all_down: AtomicBool,
    /// Probes still to lose, per host.
    to_lose: Mutex<HashMap<IpAddr, u32>>,
}

impl FakeProber {
    pub(crate) fn set_down(&self, ip: IpAddr, down: bool) {
        let mut set = self.down.lock().unwrap();
        if down {
            set.insert(ip);
        } else {
            set.remove(&ip);
        }
    }

    pub(crate) fn set_all_down(&self, down: bool) {
        self.all_down.store(down, Ordering::Relaxed);
    }

    /// The next `n` probes of `ip` get no reply.
    pub(crate) fn lose_next(&self, ip: IpAddr, n: u32) {
        self.to_lose.lock().unwrap().insert(ip, n);
    }

    fn answers(&self, ip: IpAddr) -> bool {
        if let Some(n) = self.to_lose.lock().unwrap().get_mut(&ip)
            && *n > 0
        {
            *n -= 1;
            return false;
        }
        !self.all_down.load(Ordering::Relaxed) && !self.down.lock().unwrap().contains(&ip)
    }
}

impl Prober for FakeProber {
    fn probe(
        &self,
        addr: IpAddr,
        _timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = ProbeOutcome> + Send + '_>> {
        let answers = self.answers(addr);
        Box::pin(async move {
            if answers {
                ProbeOutcome::Reply(Duration::from_micros(42))
            } else {
                ProbeOutcome::NoReply
            }
        })
    }
}

pub(crate) struct TestNode {
    pub(crate) id: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) task: JoinHandle<Result<(), datanode::DataNodeError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestNode {
    /// Graceful shutdown, as on SIGTERM.
    pub(crate) async fn stop(&mut self) -> Result<(), datanode::DataNodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("data node task panicked")
    }

    /// Sudden death: the task and its connection are dropped.
    pub(crate) fn kill(&self) {
        self.task.abort();
    }

    /// Waits (at most 10 s) until no data node holds this node's data
    /// directory. A killed node's data-path thread lets go of it a moment
    /// after the task is aborted; a killed process would at once.
    pub(crate) async fn released(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match datanode::storage::DirLock::acquire(&self.data_dir) {
                Ok(_) => return,
                Err(datanode::storage::StorageError::InUse { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{} not released: {e}", self.id),
            }
        }
    }
}

pub(crate) struct Cluster {
    pub(crate) addr: SocketAddr,
    config: Config,
    pub(crate) prober: Arc<FakeProber>,
    pub(crate) events: mpsc::UnboundedReceiver<Event>,
    pub(crate) nodes: Vec<TestNode>,
    pub(crate) dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    head: JoinHandle<Result<(), RunError>>,
}

/// Fast timings, so tests finish quickly; each test tunes what it studies.
pub(crate) fn fast_config() -> Config {
    Config {
        cluster_token: Some(test_token()),
        ping_interval: Duration::from_secs(3600),
        heartbeat_interval: Duration::from_millis(100),
        detector: headnode::DetectorConfig {
            ping_misses: 3,
            suspect_after: Duration::from_millis(600),
            hung_grace: Duration::from_millis(600),
        },
        ack_timeout: Duration::from_secs(3),
        no_node_wait: Duration::from_millis(300),
        // Most tests look at one copy; the replication tests ask for more.
        replicas: 1,
        min_replicas: 1,
        recovery_wait: Duration::from_millis(300),
        ..Config::default()
    }
}

impl Cluster {
    pub(crate) async fn start(config: Config) -> Cluster {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Cluster::start_on(listener, addr, config).await
    }

    /// Starts a head node with its HTTP port too; returns that port's address.
    pub(crate) async fn start_with_http(config: Config) -> (Cluster, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let cluster = Cluster::start_inner(listener, Some(http), addr, config).await;
        (cluster, http_addr)
    }

    /// Starts a head node on `listener`; data nodes are pointed at `addr`.
    pub(crate) async fn start_on(
        listener: TcpListener,
        addr: SocketAddr,
        config: Config,
    ) -> Cluster {
        Cluster::start_inner(listener, None, addr, config).await
    }

    async fn start_inner(
        listener: TcpListener,
        http: Option<TcpListener>,
        addr: SocketAddr,
        mut config: Config,
    ) -> Cluster {
        node_kit::telemetry::init_for_tests();
        let prober = Arc::new(FakeProber::default());
        let (events_tx, events) = mpsc::unbounded_channel();
        config.prober = Some(prober.clone());
        config.observer = Some(events_tx);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let head = match http {
            Some(http) => tokio::spawn(headnode::run_with_http(
                listener,
                http,
                config.clone(),
                stopped,
            )),
            None => tokio::spawn(headnode::run(listener, config.clone(), stopped)),
        };
        Cluster {
            addr,
            config,
            prober,
            events,
            nodes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            stop: Some(stop),
            head,
        }
    }

    pub(crate) fn node_config(&self, id: &str) -> datanode::Config {
        let mut config = datanode::Config::new(self.addr.to_string(), id.parse().unwrap());
        config.data_dir = self.dir.path().join(id);
        config.cluster_token = Some(test_token());
        config.min_backoff = Duration::from_millis(20);
        config.max_backoff = Duration::from_millis(200);
        config
    }

    /// Starts a real data node and waits until it has joined.
    pub(crate) async fn add_node(&mut self, config: datanode::Config) -> usize {
        let id = config.node_id.to_string();
        let data_dir = config.data_dir.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(datanode::run(config, async {
            let _ = stopped.await;
        }));
        self.wait_for(
            &format!("{id} to join"),
            |e| matches!(e, Event::Joined { member, .. } if member.node.as_str() == id),
        )
        .await;
        self.nodes.push(TestNode {
            id,
            data_dir,
            task,
            stop: Some(stop),
        });
        self.nodes.len() - 1
    }

    /// Waits (at most 10 s) for a membership event matching `wanted`.
    pub(crate) async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if wanted(&event) => return event,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("head node stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Every membership event seen within `window`.
    pub(crate) async fn events_within(&mut self, window: Duration) -> Vec<Event> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            seen.push(event);
        }
        seen
    }

    /// Message ids in each real node's data.txt, with how often each appears.
    pub(crate) fn stored(&self) -> HashMap<String, HashMap<MessageId, usize>> {
        let mut all = HashMap::new();
        for node in &self.nodes {
            let mut counts = HashMap::new();
            let path = node.data_dir.join(datanode::storage::DATA_FILE);
            for id in datanode::storage::stored_ids(&path).unwrap_or_default() {
                *counts.entry(id).or_insert(0) += 1;
            }
            all.insert(node.id.clone(), counts);
        }
        all
    }

    /// The text stored with each id, over every real node.
    pub(crate) fn stored_texts(&self) -> HashMap<MessageId, String> {
        let mut texts = HashMap::new();
        for node in &self.nodes {
            let path = node.data_dir.join(datanode::storage::DATA_FILE);
            for message in datanode::storage::stored_messages(&path).unwrap_or_default() {
                if let Some(id) = message.id {
                    texts.insert(id, message.text);
                }
            }
        }
        texts
    }

    /// The text stored with an id, searching every real node.
    pub(crate) fn stored_text(&self, id: MessageId) -> Option<String> {
        self.stored_texts().remove(&id)
    }

    /// Stops the head node gracefully and starts a new one on the same address.
    pub(crate) async fn restart_head(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.head).await.unwrap().unwrap();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        self.head = tokio::spawn(headnode::run(listener, self.config.clone(), async {
            let _ = stopped.await;
        }));
        self.stop = Some(stop);
    }

    pub(crate) async fn stop(mut self) {
        for node in &mut self.nodes {
            node.task.abort();
        }
        let _ = self.stop.take().unwrap().send(());
        let started = Instant::now();
        self.head.await.unwrap().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "head node shutdown took {:?}",
            started.elapsed()
        );
    }
}

/// Log lines written on this thread while the guard lives. With a
/// current-thread runtime, that is everything the head node logs.
#[derive(Clone, Default)]
pub(crate) struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub(crate) fn start() -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false)
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// How many lines contain `text`.
    pub(crate) fn count(&self, text: &str) -> usize {
        let bytes = self.0.lock().unwrap();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;

    fn make_writer(&'a self) -> LogCapture {
        self.clone()
    }
}

/// A line-framed connection that has completed the handshake as `role`
/// (`cliente`, `cliente id=<id>`, `lector`).
pub(crate) async fn connect_as(addr: SocketAddr, role: &str) -> Connection {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Connection::connect(stream, 1 << 16).unwrap();
    handshake::initiate(
        &mut conn.reader,
        &mut conn.writer,
        Some(role),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    conn
}

/// A line-framed client that has completed the handshake as `cliente`.
pub(crate) async fn connect_client(addr: SocketAddr) -> Connection {
    connect_as(addr, "cliente").await
}

/// Sends every text pipelined (all at once) and returns the replies in order.
/// `on_reply` is called after each reply (for example to count progress).
pub(crate) async fn send_pipelined(
    addr: SocketAddr,
    texts: Vec<String>,
    on_reply: impl Fn() + Send + 'static,
) -> Vec<StoreReply> {
    let conn = connect_client(addr).await;
    let Connection {
        mut reader,
        mut writer,
        ..
    } = conn;
    let expected = texts.len();
    let writing = tokio::spawn(async move {
        for chunk in texts.chunks(100) {
            for text in chunk {
                writer.queue(text.as_bytes());
            }
            writer.flush().await.unwrap();
        }
        writer
    });
    let mut replies = Vec::with_capacity(expected);
    while replies.len() < expected {
        let line = tokio::time::timeout(Duration::from_secs(30), reader.read_frame())
            .await
            .expect("client left hanging: no reply within 30 s")
            .unwrap()
            .expect("head node closed the connection");
        replies.push(StoreReply::parse(line.as_str()).unwrap());
        on_reply();
    }
    drop(writing.await.unwrap());
    replies
}

/// Checks that every acknowledged reply names a node that holds the message:
/// a real node's data.txt, or the fake nodes' records. Returns the number of
/// ids stored more than once.
pub(crate) fn check_every_ack_is_stored(
    cluster: &Cluster,
    replies: &[StoreReply],
    fakes: &HashMap<String, Vec<MessageId>>,
) -> usize {
    let stored = cluster.stored();
    for reply in replies {
        let StoreReply::Stored { holders, id } = reply else {
            panic!("client got an error: {reply:?}");
        };
        let node = &holders[0];
        let held = match stored.get(node) {
            Some(ids) => ids.contains_key(id),
            None => fakes.get(node).is_some_and(|ids| ids.contains(id)),
        };
        assert!(held, "ack for {id} names {node}, which does not hold it");
    }
    let mut seen: HashMap<MessageId, usize> = HashMap::new();
    for ids in stored.values() {
        for (id, n) in ids {
            *seen.entry(*id).or_default() += n;
        }
    }
    for ids in fakes.values() {
        for id in ids {
            *seen.entry(*id).or_default() += 1;
        }
    }
    seen.values().filter(|n| **n > 1).count()
}

/// A client that announced `client_id`: its lines are `<seq> <text>`.
pub(crate) async fn keyed_client(addr: SocketAddr, client_id: &str) -> Connection {
    connect_as(addr, &format!("cliente id={client_id}")).await
}

/// Sends `<seq> <text>` on a keyed client and reads its answer (at most 10 s).
pub(crate) async fn send_keyed(conn: &mut Connection, seq: u64, text: &str) -> StoreReply {
    conn.writer
        .send(format!("{seq} {text}").as_bytes())
        .await
        .unwrap();
    let line = framed::line(&mut conn.reader, "the reply").await;
    StoreReply::parse(&line).unwrap()
}
