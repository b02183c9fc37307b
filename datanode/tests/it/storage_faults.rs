//! A data node whose disk fails, seen from a scripted head node: the batch
//! that could not be stored is answered `ERROR storage failure: ...`, never
//! `recibido`, and the node stops with the storage error.

use datanode::DataNodeError;
use datanode::storage::{Backend, Faults, StorageError, stored_ids, verify};

use crate::support::ScriptedHead;

async fn start_with(faults: Faults) -> ScriptedHead {
    ScriptedHead::start(|config| config.storage = Backend::Faulty(faults)).await
}

/// Reads until the data node closes the connection; every line it sent.
async fn lines_until_closed(head: &mut ScriptedHead) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(line) = head.next_line().await {
        lines.push(line);
    }
    lines
}

#[tokio::test]
async fn a_full_disk_mid_batch_is_answered_with_an_error_and_no_acknowledgement() {
    // Room for the first record and part of the next batch.
    let mut head = start_with(Faults {
        write_budget: Some(100),
        ..Faults::default()
    })
    .await;
    let first = head.send(1).await;
    head.expect_ack(&first[0]).await;

    head.send(5).await;
    let answers = lines_until_closed(&mut head).await;
    assert!(
        answers.iter().all(|line| !line.starts_with("recibido")),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].starts_with("ERROR storage failure: cannot write ")
            && answers[0].ends_with("No space left on device (os error 28)"),
        "{answers:?}"
    );

    let path = head.data_file();
    assert_eq!(
        stored_ids(&path).unwrap(),
        ["7-1".parse().unwrap()],
        "the failed batch was cut off"
    );
    assert!(verify(&path).unwrap().is_clean());
    let ended = head.node.await.expect("data node panicked");
    assert!(
        matches!(
            ended,
            Err(DataNodeError::Storage(StorageError::Write { .. }))
        ),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_failed_fsync_is_answered_with_an_error_and_no_acknowledgement() {
    let mut head = start_with(Faults {
        syncs_before_eio: Some(1),
        ..Faults::default()
    })
    .await;
    let first = head.send(1).await;
    head.expect_ack(&first[0]).await;

    head.send(3).await;
    let answers = lines_until_closed(&mut head).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].starts_with("ERROR storage failure: cannot sync "),
        "{answers:?}"
    );
    assert_eq!(stored_ids(&head.data_file()).unwrap().len(), 1);
    let ended = head.node.await.expect("data node panicked");
    let error = ended.unwrap_err();
    assert!(
        matches!(error, DataNodeError::Storage(StorageError::Sync { .. })),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .ends_with("Input/output error (os error 5)"),
        "one line naming the cause: {error}"
    );
}
