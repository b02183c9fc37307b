//! `client tail` and `client get` against a fake head node on 127.0.0.1:0:
//! a tail answered `ERROR incomplete` is asked again from the last id it
//! printed, with nothing printed twice or skipped, and `client get`'s exit
//! status tells found, not found and unavailable apart.

use std::time::Duration;

use client::ConnectOptions;
use client::read::{ReadError, TailOptions};

use crate::store::{Peer, listen, run_binary};

fn found(seq: u64) -> String {
    format!("found 7-{seq} 1795413331793 dn1+dn2 - m{seq}")
}

const INCOMPLETE: &str = "ERROR incomplete: dn2 (not connected), dn3 (not connected) could hold messages no other data node has (W=2); ask again";

fn options(server: String, retry_for: Duration) -> TailOptions {
    let mut connect = ConnectOptions::new(server, None);
    connect.retry_for = retry_for;
    TailOptions::new(connect)
}

#[tokio::test]
async fn an_incomplete_tail_is_asked_again_from_the_last_id_printed() {
    let (listener, server) = listen().await;
    let head = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        assert_eq!(peer.role, "lector");
        assert_eq!(peer.next().await.as_deref(), Some("tail start 1000"));
        peer.answer(&found(1)).await;
        peer.answer(&found(2)).await;
        peer.answer(INCOMPLETE).await;
        // Asked again after what it printed, as long as it is incomplete.
        assert_eq!(peer.next().await.as_deref(), Some("tail 7-2 1000"));
        peer.answer(INCOMPLETE).await;
        assert_eq!(peer.next().await.as_deref(), Some("tail 7-2 1000"));
        peer.answer(&found(3)).await;
        peer.answer("end 1 7-3 done").await;
    });
    let mut seen = Vec::new();
    let last = client::read::tail(
        &options(server, Duration::from_secs(10)),
        |found| {
            seen.push(found.record.id.to_string());
            Ok(())
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(seen, ["7-1", "7-2", "7-3"], "once each, none skipped");
    assert_eq!(last.map(|id| id.to_string()).as_deref(), Some("7-3"));
    head.await.unwrap();
}

#[tokio::test]
async fn a_tail_incomplete_for_longer_than_retry_for_gives_up_unavailable() {
    let (listener, server) = listen().await;
    let head = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener).await;
        let mut asked = 0;
        while let Some(request) = peer.next_or_closed().await {
            assert_eq!(request, "tail start 1000");
            asked += 1;
            peer.answer(INCOMPLETE).await;
        }
        asked
    });
    let failed = client::read::tail(
        &options(server, Duration::from_millis(300)),
        |_| Ok(()),
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(failed, ReadError::Unavailable(_)), "{failed}");
    let asked = head.await.unwrap();
    assert!(
        asked >= 2,
        "asked again before giving up ({asked} requests)"
    );
}

#[tokio::test]
async fn get_exits_0_found_1_not_found_3_unavailable() {
    let get = |answer: &str| {
        let answer = answer.to_owned();
        async move {
            let (finished, mut peer) =
                run_binary(vec!["get".into(), "7-9".into()], vec![answer]).await;
            assert_eq!(peer.role, "lector");
            assert_eq!(peer.next_or_closed().await, None);
            finished
        }
    };
    let found = get(&found(9)).await;
    assert_eq!(found.status.code(), Some(0), "{}", found.stderr);
    assert!(found.stdout.contains("m9"), "{}", found.stdout);
    let not_found = get("notfound 7-9").await;
    assert_eq!(not_found.status.code(), Some(1), "{}", not_found.stderr);
    assert_eq!(not_found.stderr.trim(), "client: 7-9 not found");
    let unavailable =
        get("ERROR unavailable: dn2: dn2 (not connected); it may be stored there, ask again").await;
    assert_eq!(unavailable.status.code(), Some(3), "{}", unavailable.stderr);
    assert!(
        unavailable.stderr.contains("unavailable: dn2"),
        "{}",
        unavailable.stderr
    );
    let refused = get("ERROR head node busy: 8 reads at once; try again").await;
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
}
