//! Writes the data directories of a cluster that holds many client keys,
//! as its data nodes would have written them, for `bench/restart_keys.py`
//! (restart-to-first-ack with millions of keys held): writing them through
//! the cluster would take minutes.
//!
//! ```text
//! cargo run --release -p datanode --example key_fixture -- <out-dir> <keys> [<nodes> [<replicas> [<clients>]]]
//! ```
//!
//! Key `c-<k>/<seq>` (clients `c-0` .. `c-<clients - 1>`, keys dealt round
//! the clients) is message `1-<n + 1>` for the n-th key (from 0), held by
//! `replicas` consecutive nodes (`dn1` .. `dn<nodes>`) from `n % nodes`;
//! its text is `fixture <n>`; every record carries the time the fixture
//! was written. Each directory gets a `members` file naming every node,
//! so a head node started over them waits for all of them, and an `epoch`
//! file at 1, so its ids are above the fixture's. Prints, per node, its
//! records.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use datanode::storage::{DATA_FILE, format_record};
use protocol::ids::{KeyRef, MessageId};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |at: usize, default: u64| -> Option<u64> {
        match args.get(at) {
            Some(text) => text.parse().ok(),
            None => Some(default),
        }
    };
    let (Some(out), Some(keys), Some(nodes), Some(replicas), Some(clients)) = (
        args.first().map(PathBuf::from),
        args.get(1).and_then(|text| text.parse::<u64>().ok()),
        number(2, 3),
        number(3, 2),
        number(4, 1000),
    ) else {
        eprintln!("usage: key_fixture <out-dir> <keys> [<nodes> [<replicas> [<clients>]]]");
        return ExitCode::from(2);
    };
    if nodes == 0 || clients == 0 || replicas == 0 || replicas > nodes {
        eprintln!("key_fixture: need 0 < replicas <= nodes and clients > 0");
        return ExitCode::from(2);
    }
    match write(&out, keys, nodes, replicas, clients) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("key_fixture: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(
    out: &std::path::Path,
    keys: u64,
    nodes: u64,
    replicas: u64,
    clients: u64,
) -> std::io::Result<()> {
    const EPOCH: u64 = 1;
    let now = SystemTime::now();
    let stamp = node_kit::timefmt::timestamp(now);
    let names: Vec<String> = (1..=nodes).map(|n| format!("dn{n}")).collect();
    let mut files = Vec::new();
    for name in &names {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("members"), format!("{}\n", names.join(" ")))?;
        std::fs::write(dir.join("epoch"), format!("{EPOCH}\n"))?;
        let file = std::fs::File::create(dir.join(DATA_FILE))?;
        files.push(BufWriter::with_capacity(1 << 20, file));
    }
    let client_names: Vec<String> = (0..clients).map(|c| format!("c-{c}")).collect();
    let mut records = vec![0u64; names.len()];
    let mut buf = Vec::with_capacity(256);
    for n in 0..keys {
        let client = &client_names[(n % clients) as usize];
        let key = KeyRef {
            client,
            seq: n / clients + 1,
        };
        let id = MessageId {
            epoch: EPOCH,
            seq: n + 1,
        };
        buf.clear();
        format_record(
            &mut buf,
            &stamp,
            Some(id),
            Some(key),
            format!("fixture {n}").as_bytes(),
        );
        for r in 0..replicas {
            let node = ((n + r) % nodes) as usize;
            files[node].write_all(&buf)?;
            records[node] += 1;
        }
    }
    for file in &mut files {
        file.flush()?;
        file.get_ref().sync_all()?;
    }
    for (name, count) in names.iter().zip(&records) {
        println!("{name} {count}");
    }
    Ok(())
}
