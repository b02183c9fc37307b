//! What several areas of the client's tests use.

use std::io;
use std::process::Command;

use test_support::server::TestServer;
use tokio::net::TcpListener;

/// An echo server in this process on 127.0.0.1:0.
pub(crate) async fn echo_server() -> TestServer<io::Result<()>> {
    TestServer::start(|listener, shutdown| {
        echo_server::run(listener, echo_server::Config::default(), shutdown)
    })
    .await
}

/// An echo server in this process on `listener`.
pub(crate) fn echo_server_on(listener: TcpListener) -> TestServer<io::Result<()>> {
    TestServer::start_on(listener, |listener, shutdown| {
        echo_server::run(listener, echo_server::Config::default(), shutdown)
    })
}

/// The `client` binary with `args`, and none of the settings a test sets by
/// flag coming from the environment instead.
pub(crate) fn client_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
    command
        .args(args)
        .env_remove("SERVER")
        .env_remove("STATUS_HTTP")
        .env_remove("LOG_DIR")
        .env_remove("CLIENT_ID");
    command
}
