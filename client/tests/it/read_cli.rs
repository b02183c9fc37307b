//! `client get` and `client tail`: their arguments, and a clear one-line
//! error when the head node cannot be reached.

use test_support::process::{Finished, run_to_end};

use crate::helpers::client_command;

fn client(args: &[&str]) -> Finished {
    run_to_end(&mut client_command(args))
}

#[test]
fn get_needs_an_id_or_a_key_and_not_both() {
    let none = client(&["get"]);
    assert!(!none.status.success());
    assert!(none.stderr.contains("required"), "{}", none.stderr);
    let both = client(&["get", "1-2", "--key", "c-1/2"]);
    assert!(!both.status.success());
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    for bad in [
        &["get", "12"][..],
        &["get", "--key", "c-1"],
        &["get", "--key", "c 1/2"],
    ] {
        let output = client(bad);
        assert!(!output.status.success(), "{bad:?}");
        assert!(
            output.stderr.contains("invalid value"),
            "{bad:?}: {}",
            output.stderr
        );
    }
}

#[test]
fn tail_takes_from_or_since_and_a_poll_period() {
    let both = client(&["tail", "--from", "1-2", "--since", "10m"]);
    assert!(!both.status.success());
    assert!(
        both.stderr.contains("cannot be used with"),
        "{}",
        both.stderr
    );
    let bad_from = client(&["tail", "--from", "x"]);
    assert!(
        bad_from.stderr.contains("invalid value"),
        "{}",
        bad_from.stderr
    );
    let bad_poll = client(&["tail", "-f", "--poll", "soon"]);
    assert!(!bad_poll.status.success());
    let help = client(&["tail", "--help"]);
    assert!(help.status.success());
    let help = help.stdout;
    for flag in ["--from", "--since", "--follow", "--json", "--poll"] {
        assert!(help.contains(flag), "{flag} missing from {help}");
    }
}

#[test]
fn tail_refuses_a_bad_since_in_one_line() {
    let output = client(&["tail", "--since", "yesterday", "--server", "127.0.0.1:1"]);
    assert!(!output.status.success());
    let err = &output.stderr;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("client: bad --since \"yesterday\""),
        "{err}"
    );
}

#[test]
fn get_without_a_head_node_fails_in_one_line() {
    // Nothing listens on port 1 of the loopback.
    let output = client(&["get", "1-2", "--server", "127.0.0.1:1", "--retry-for", "0s"]);
    assert!(!output.status.success());
    let err = &output.stderr;
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("client: cannot reach 127.0.0.1:1"), "{err}");
    assert!(output.stdout.is_empty());
}
