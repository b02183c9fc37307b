//! A head node of our own, scripted by each test: it accepts one data node,
//! welcomes it, reads its report (`held`, `peers`, `ready`), sends it
//! messages and reads its answers.

use std::time::Duration;

use datanode::{Config, DataNodeError};
use protocol::datanode::{FromDataNode, HELD_PER_LINE, IdRange};
use protocol::handshake::{self, PETICION, RoleStep};
use protocol::ids::MessageId;
use protocol::{Connection, ReaderConfig};
use test_support::{framed, http};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The scripted head node, and the data node it has accepted.
pub(crate) struct ScriptedHead {
    pub(crate) conn: Connection,
    listener: TcpListener,
    next_seq: u64,
    /// The rest of a `recibidos` run read but not yet handed out, one
    /// `recibido <id>` each.
    run: std::collections::VecDeque<String>,
    /// Where the data node keeps `data.txt`.
    pub(crate) dir: tempfile::TempDir,
    /// The data node's `run`.
    pub(crate) node: JoinHandle<Result<(), DataNodeError>>,
    /// The data node's HTTP port (`/metrics`), when it serves one.
    pub(crate) http: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
}

impl ScriptedHead {
    /// Starts a data node in a temporary directory, with `configure` applied
    /// to its configuration, welcomes it under epoch 1 and reads its report.
    pub(crate) async fn start(configure: impl FnOnce(&mut Config)) -> ScriptedHead {
        let mut head = ScriptedHead::start_in(tempfile::tempdir().unwrap(), configure).await;
        head.welcome(1).await;
        head.read_report().await;
        head
    }

    /// [`ScriptedHead::start`], with the data node's HTTP port on.
    pub(crate) async fn start_with_http(configure: impl FnOnce(&mut Config)) -> ScriptedHead {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut head =
            ScriptedHead::spawn(tempfile::tempdir().unwrap(), configure, Some(http)).await;
        head.welcome(1).await;
        head.read_report().await;
        head
    }

    /// Starts a data node in `dir` (which may hold a previous run's files)
    /// and takes its connection through the handshake, up to `welcome`.
    pub(crate) async fn start_in(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Config),
    ) -> ScriptedHead {
        ScriptedHead::spawn(dir, configure, None).await
    }

    async fn spawn(
        dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Config),
        http: Option<TcpListener>,
    ) -> ScriptedHead {
        node_kit::telemetry::init_for_tests();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::new(
            listener.local_addr().unwrap().to_string(),
            "dn1".parse().unwrap(),
        );
        config.data_dir = dir.path().to_path_buf();
        // This scripted head node welcomes without a challenge.
        config.open_registration = true;
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let http_addr = http.as_ref().map(|h| h.local_addr().unwrap());
        let node = match http {
            Some(http) => tokio::spawn(datanode::run_with_http(config, http, stopped)),
            None => tokio::spawn(datanode::run(config, stopped)),
        };
        let conn = accept_node(&listener).await;
        ScriptedHead {
            conn,
            listener,
            next_seq: 1,
            run: Default::default(),
            dir,
            node,
            http: http_addr,
            stop: Some(stop),
        }
    }

    /// Sends `welcome dn1 <epoch>`, as a head node without a head-id does.
    pub(crate) async fn welcome(&mut self, epoch: u64) {
        let line = format!("welcome dn1 {epoch}");
        self.conn.writer.send(line.as_bytes()).await.unwrap();
    }

    /// Sends `welcome dn1 <epoch> <head-id>`.
    pub(crate) async fn welcome_as(&mut self, epoch: u64, head: &str) {
        let line = format!("welcome dn1 {epoch} {head}");
        self.conn.writer.send(line.as_bytes()).await.unwrap();
    }

    /// Reads the report up to `ready`: its `held` lines (parsed) and its
    /// `peers` line, if any.
    pub(crate) async fn read_report(&mut self) -> Report {
        let mut report = Report::default();
        loop {
            let line = self.next_line().await.expect("closed during its report");
            match FromDataNode::parse(&line) {
                Ok(FromDataNode::Held { client, keys }) => {
                    assert!(keys.len() <= HELD_PER_LINE, "{line}");
                    for (seq, id) in keys {
                        report.held.push((format!("{client}/{seq}"), id));
                    }
                }
                Ok(FromDataNode::Peers(peers)) => {
                    report.peers = Some(peers.iter().map(ToString::to_string).collect())
                }
                Ok(FromDataNode::Removed(ranges)) => report.removed.extend(ranges),
                Ok(FromDataNode::Ready) => return report,
                other => panic!("unexpected line in the report: {line:?} ({other:?})"),
            }
        }
    }

    /// Waits for the data node to connect again (after it lost or refused
    /// this head node) and takes it through the handshake.
    pub(crate) async fn reconnected(&mut self) {
        self.conn = tokio::time::timeout(Duration::from_secs(10), accept_node(&self.listener))
            .await
            .expect("the data node did not come back within 10 s");
    }

    /// Sends one keyed message `mensaje <id> <key>: <text>`.
    pub(crate) async fn send_keyed(&mut self, id: &str, key: &str, text: &str) {
        let line = format!("mensaje {id} {key}: {text}");
        self.conn.writer.send(line.as_bytes()).await.unwrap();
    }

    /// Queues raw lines and sends them in one write.
    pub(crate) async fn send_lines(&mut self, lines: &[String]) {
        for line in lines {
            self.conn.writer.queue(line.as_bytes());
        }
        self.conn.writer.flush().await.unwrap();
    }

    /// Sends `count` messages in one write; their ids.
    pub(crate) async fn send(&mut self, count: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = format!("7-{}", self.next_seq);
            self.next_seq += 1;
            self.conn
                .writer
                .queue(format!("mensaje {id}: numero random: 1").as_bytes());
            ids.push(id);
        }
        self.conn.writer.flush().await.unwrap();
        ids
    }

    /// The next line from the data node, a run of acknowledgements
    /// (`recibidos <first> <count>`) read as its `count` single
    /// `recibido <id>` lines; `None` once it has closed the connection.
    pub(crate) async fn next_line(&mut self) -> Option<String> {
        if let Some(line) = self.run.pop_front() {
            return Some(line);
        }
        let line = self.next_raw_line().await?;
        match protocol::datanode::FromDataNode::parse(&line) {
            Ok(run @ protocol::datanode::FromDataNode::StoredRun { .. }) => {
                self.run
                    .extend(run.stored_ids().map(|id| format!("recibido {id}")));
                self.run.pop_front()
            }
            _ => Some(line),
        }
    }

    /// The next line from the data node as sent; `None` once it has closed
    /// the connection.
    pub(crate) async fn next_raw_line(&mut self) -> Option<String> {
        assert!(self.run.is_empty(), "a run was not read to its end");
        framed::next_line(&mut self.conn.reader, "a line from the data node").await
    }

    pub(crate) async fn expect_ack(&mut self, id: &str) {
        let line = self.next_line().await;
        assert_eq!(line, Some(format!("recibido {id}")));
    }

    /// `GET /metrics` from the data node's HTTP port: the body.
    pub(crate) async fn metrics(&self) -> String {
        let addr = self.http.expect("started with its HTTP port");
        let answer = http::get(addr, "/metrics").await;
        assert!(
            answer.status_line.starts_with("HTTP/1.1 200"),
            "{}",
            answer.status_line
        );
        answer.body
    }

    /// Where the data node keeps its messages.
    pub(crate) fn data_file(&self) -> std::path::PathBuf {
        self.dir.path().join(datanode::storage::DATA_FILE)
    }

    /// Stops the data node as on SIGTERM and returns how `run` ended.
    pub(crate) async fn stop(mut self) -> Result<(), DataNodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.node).await.expect("data node panicked")
    }

    /// Stops the data node and keeps its directory, for a restart.
    pub(crate) async fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // It asks to leave; the head node lets it go.
        let _ = self.conn.writer.send(b"bye").await;
        (&mut self.node).await.expect("data node panicked").unwrap();
        self.dir
    }
}

/// What a data node reported after `welcome`.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Every held key (`client/seq`) and its id.
    pub(crate) held: Vec<(String, MessageId)>,
    /// The `peers` line, if it sent one.
    pub(crate) peers: Option<Vec<String>>,
    /// The ranges of its `removed` lines.
    pub(crate) removed: Vec<IdRange>,
}

async fn accept_node(listener: &TcpListener) -> Connection {
    let (stream, _) = listener.accept().await.unwrap();
    let mut conn = accept(stream);
    handshake::accept(
        &mut conn.reader,
        &mut conn.writer,
        RoleStep::Required,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    conn
}

fn accept(stream: TcpStream) -> Connection {
    Connection::accept(stream, ReaderConfig::default(), PETICION.as_bytes()).unwrap()
}
