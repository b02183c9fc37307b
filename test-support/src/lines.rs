//! A blocking connection to a server in another process, for tests on
//! plain threads: every read and write is bounded, so a stuck server fails
//! the test instead of hanging it.

use crate::WAIT;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};

/// Connects to `addr` with [`WAIT`] on every read and write; returns a
/// buffered reader and a writer over the same connection.
///
/// # Panics
///
/// If the connection cannot be made within [`WAIT`].
pub fn connect(addr: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream.set_write_timeout(Some(WAIT)).expect("write timeout");
    let reader = BufReader::new(stream.try_clone().expect("a second handle"));
    (reader, stream)
}

/// Reads one line, `\n` included; `what` names it in the failure message.
///
/// # Panics
///
/// If the peer closes first, or the reader's timeout passes first (a stuck
/// server), or the read fails.
pub fn read_line(reader: &mut impl BufRead, what: &str) -> String {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => panic!("the peer closed the connection before {what}"),
        Ok(_) => line,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("{what} did not arrive in time: the peer is stuck")
        }
        Err(e) => panic!("reading {what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn lines_arrive_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut reader, mut writer) = connect(listener.local_addr().unwrap());
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"one\ntwo\n").unwrap();
        assert_eq!(read_line(&mut reader, "the first line"), "one\n");
        assert_eq!(read_line(&mut reader, "the second line"), "two\n");
        writer.write_all(b"back\n").unwrap();
    }

    #[test]
    #[should_panic(expected = "the peer closed the connection before the answer")]
    fn a_close_before_the_line_fails_the_test() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut reader, _writer) = connect(listener.local_addr().unwrap());
        drop(listener.accept().unwrap());
        read_line(&mut reader, "the answer");
    }
}
