//! A head node of our own, scripted by each test: it accepts one data node,
//! welcomes it, sends it messages and reads its answers.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use datanode::{Config, DataNodeError};
use protocol::handshake::{self, RoleStep};
use protocol::message::PETICION;
use protocol::{Connection, ReaderConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The scripted head node, and the data node it has accepted.
pub struct ScriptedHead {
    pub conn: Connection,
    next_seq: u64,
    /// Where the data node keeps `data.txt`.
    pub dir: tempfile::TempDir,
    /// The data node's `run`.
    pub node: JoinHandle<Result<(), DataNodeError>>,
    stop: Option<oneshot::Sender<()>>,
}

impl ScriptedHead {
    /// Starts a data node in a temporary directory, with `configure` applied
    /// to its configuration, and welcomes it.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> ScriptedHead {
        protocol::telemetry::init_for_tests();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(
            listener.local_addr().unwrap().to_string(),
            "dn1".parse().unwrap(),
        );
        config.data_dir = dir.path().to_path_buf();
        // This scripted head node welcomes without a challenge.
        config.open_registration = true;
        configure(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let node = tokio::spawn(datanode::run(config, async {
            let _ = stopped.await;
        }));
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
        conn.writer.send(b"welcome dn1").await.unwrap();
        ScriptedHead {
            conn,
            next_seq: 1,
            dir,
            node,
            stop: Some(stop),
        }
    }

    /// Sends `count` messages in one write; their ids.
    pub async fn send(&mut self, count: usize) -> Vec<String> {
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

    /// The next line from the data node; `None` once it has closed the connection.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(Duration::from_secs(10), self.conn.reader.read_frame())
            .await
            .expect("nothing from the data node within 10 s");
        match line {
            Ok(Some(line)) => Some(line.as_str().to_owned()),
            Ok(None) | Err(_) => None,
        }
    }

    pub async fn expect_ack(&mut self, id: &str) {
        let line = self.next_line().await;
        assert_eq!(line, Some(format!("recibido {id}")));
    }

    /// Where the data node keeps its messages.
    pub fn data_file(&self) -> std::path::PathBuf {
        self.dir.path().join(datanode::storage::DATA_FILE)
    }

    /// Stops the data node as on SIGTERM and returns how `run` ended.
    pub async fn stop(mut self) -> Result<(), DataNodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.node).await.expect("data node panicked")
    }
}

fn accept(stream: TcpStream) -> Connection {
    Connection::accept(stream, ReaderConfig::default(), PETICION.as_bytes()).unwrap()
}
