use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::connection::ReaderConfig;
use crate::datanode::HeadId;
use crate::handshake::{PETICION, Role, RoleStep};

const TOKEN: &str = "register-test-token-0123456789";

/// What the scripted head node does after it has read the hello.
#[derive(Clone, Copy)]
enum Head {
    /// Challenge with a good proof, check the node's, welcome at this epoch
    /// (without a head-id, as a head node older than head-ids does).
    Welcome(u64),
    /// As `Welcome`, with this epoch and head-id.
    WelcomeAs(u64, u64),
    /// Challenge with a proof made from another token.
    WrongProof,
    /// Welcome at once, with no challenge.
    WelcomeUnchallenged,
    /// Answer the hello with `ERROR <reason>`.
    Refuse(&'static str),
}

/// Runs `head` against `register` with this node's token (if any) and
/// newest epoch (accepted from a head node without a head-id); the
/// outcome, and every line the head node read after the hello.
async fn run(
    head: Head,
    token: Option<&ClusterToken>,
    newest_epoch: u64,
) -> (Result<Welcomed, RegisterError>, DataNodeHello, Vec<String>) {
    run_as(head, token, fence(newest_epoch, 0)).await
}

fn fence(epoch: u64, head: u64) -> Fence {
    Fence {
        epoch,
        head: HeadId(head),
    }
}

/// [`run`] with the newest fence this node has accepted.
async fn run_as(
    head: Head,
    token: Option<&ClusterToken>,
    newest: Fence,
) -> (Result<Welcomed, RegisterError>, DataNodeHello, Vec<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let head_task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn =
            Connection::accept(stream, ReaderConfig::default(), PETICION.as_bytes()).unwrap();
        let role = handshake::accept(
            &mut conn.reader,
            &mut conn.writer,
            RoleStep::Required,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let Some(Role::DataNode(hello)) = role else {
            panic!("not a data node: {role:?}");
        };
        script(head, &hello, &mut conn).await;
        let mut read = Vec::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(5), conn.reader.read_frame()).await
        {
            read.push(line.as_str().to_owned());
        }
        (hello, read)
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut conn = Connection::connect(stream, 1 << 16).unwrap();
    let registration = Registration {
        node_id: "dn1".parse().unwrap(),
        incarnation: 7,
        zone: Some("z1".parse().unwrap()),
        store: Some(0xabc),
        token: token.map(|token| (token, Nonce::random())),
        newest,
        step_timeout: Duration::from_secs(5),
    };
    let outcome = register(&mut conn, &registration).await;
    drop(conn);
    let (hello, read) = head_task.await.unwrap();
    (outcome, hello, read)
}

async fn script(head: Head, hello: &DataNodeHello, conn: &mut Connection<TcpStream>) {
    let token = ClusterToken::new(TOKEN).unwrap();
    let head_nonce = Nonce::random();
    let node_id = hello.node_id.clone().unwrap();
    let exchange = Exchange {
        node_id: node_id.as_str(),
        incarnation: hello.incarnation.unwrap(),
        node_nonce: hello.nonce.as_ref().unwrap_or(&head_nonce),
        head_nonce: &head_nonce,
    };
    let welcome = |epoch, head| ToDataNode::Welcome {
        node: node_id.clone(),
        epoch,
        head,
    };
    match head {
        Head::Welcome(_) | Head::WelcomeAs(..) => {
            let (epoch, head) = match head {
                Head::WelcomeAs(epoch, id) => (epoch, Some(HeadId(id))),
                Head::Welcome(epoch) => (epoch, None),
                _ => unreachable!(),
            };
            let proof = token.head_proof(&exchange);
            let challenge = ToDataNode::Challenge {
                nonce: head_nonce,
                proof,
            };
            conn.writer.queue_with(|buf| challenge.encode(buf));
            conn.writer.flush().await.unwrap();
            let Ok(Some(line)) = conn.reader.read_frame().await else {
                // The node gave up at the challenge.
                return;
            };
            let Ok(FromDataNode::Proof(theirs)) = FromDataNode::parse(line.as_str()) else {
                panic!("no proof: {}", line.as_str());
            };
            assert!(token.verify_node(&exchange, &theirs), "the node's proof");
            conn.writer
                .queue_with(|buf| welcome(epoch, head).encode(buf));
        }
        Head::WrongProof => {
            let other = ClusterToken::new("another-token-just-as-long-0123").unwrap();
            let challenge = ToDataNode::Challenge {
                nonce: head_nonce,
                proof: other.head_proof(&exchange),
            };
            conn.writer.queue_with(|buf| challenge.encode(buf));
        }
        Head::WelcomeUnchallenged => conn.writer.queue_with(|buf| welcome(5, None).encode(buf)),
        Head::Refuse(reason) => conn.writer.queue_error(&reason),
    }
    conn.writer.flush().await.unwrap();
}

fn token() -> ClusterToken {
    ClusterToken::new(TOKEN).unwrap()
}

#[tokio::test]
async fn a_head_node_that_proves_the_token_welcomes_the_node_after_its_proof() {
    let token = token();
    let (outcome, hello, read) = run(Head::Welcome(9), Some(&token), 9).await;
    let welcomed = outcome.unwrap();
    assert_eq!((welcomed.node.as_str(), welcomed.fence.epoch), ("dn1", 9));
    assert_eq!(hello.incarnation, Some(7));
    assert_eq!(hello.epoch, Some(9), "the hello names the newest epoch");
    assert_eq!(hello.zone.as_ref().map(Zone::as_str), Some("z1"));
    assert_eq!(hello.store, Some(0xabc));
    assert!(read.is_empty(), "nothing after the proof: {read:?}");
}

#[tokio::test]
async fn a_head_node_older_than_the_newest_epoch_seen_is_told_so_and_refused() {
    let token = token();
    let (outcome, _, read) = run(Head::Welcome(4), Some(&token), 5).await;
    let error = outcome.unwrap_err();
    assert!(
        matches!(
            error,
            RegisterError::StaleHead { offered, newest }
                if offered.epoch == 4 && newest.epoch == 5
        ),
        "{error:?}"
    );
    assert!(!error.is_fatal(), "a newer head node may come back");
    assert_eq!(read, [format!("ERROR {error}")]);
    assert!(read[0].starts_with("ERROR stale head node: epoch 4 is older than 5"));
    assert_eq!(crate::datanode::newest_in_refusal(&read[0][6..]), Some(5));
}

#[tokio::test]
async fn another_head_node_at_the_newest_epoch_is_refused_and_the_same_one_welcomed() {
    let token = token();
    let (outcome, _, read) = run_as(Head::WelcomeAs(5, 2), Some(&token), fence(5, 1)).await;
    let error = outcome.unwrap_err();
    assert!(
        matches!(error, RegisterError::StaleHead { .. }),
        "{error:?}"
    );
    assert!(
        !error.is_fatal(),
        "the head node goes above, and the node tries again"
    );
    assert!(
        read[0].starts_with("ERROR stale head node: epoch 5 belongs to head node 0000000000000001"),
        "{read:?}"
    );
    let (outcome, _, read) = run_as(Head::WelcomeAs(5, 1), Some(&token), fence(5, 1)).await;
    assert_eq!(outcome.unwrap().fence, fence(5, 1));
    assert!(read.is_empty(), "{read:?}");
    let (outcome, _, _) = run_as(Head::WelcomeAs(6, 2), Some(&token), fence(5, 1)).await;
    assert_eq!(outcome.unwrap().fence, fence(6, 2));
}

#[tokio::test]
async fn a_head_node_as_new_as_the_newest_epoch_seen_or_newer_is_welcomed() {
    let token = token();
    for (newest, offered) in [(5, 5), (5, 6), (0, 1)] {
        let (outcome, _, read) = run(Head::Welcome(offered), Some(&token), newest).await;
        assert_eq!(
            outcome.unwrap().fence.epoch,
            offered,
            "{newest} then {offered}"
        );
        assert!(read.is_empty(), "{read:?}");
    }
}

#[tokio::test]
async fn a_head_node_with_a_wrong_proof_gets_no_proof_back() {
    let token = token();
    let (outcome, _, read) = run(Head::WrongProof, Some(&token), 0).await;
    let error = outcome.unwrap_err();
    assert!(
        matches!(error, RegisterError::HeadNotAuthenticated),
        "{error:?}"
    );
    assert!(error.is_fatal());
    assert!(read.is_empty(), "{read:?}");
}

#[tokio::test]
async fn a_welcome_without_a_challenge_is_refused_by_a_node_with_a_token() {
    let token = token();
    let (outcome, _, _) = run(Head::WelcomeUnchallenged, Some(&token), 0).await;
    assert!(matches!(outcome, Err(RegisterError::HeadNotAuthenticated)));
}

#[tokio::test]
async fn a_node_without_a_token_is_welcomed_unchallenged_and_cannot_answer_a_challenge() {
    let (outcome, hello, _) = run(Head::WelcomeUnchallenged, None, 0).await;
    assert_eq!(outcome.unwrap().fence.epoch, 5);
    assert_eq!(hello.nonce, None);
    let (outcome, _, _) = run(Head::Welcome(5), None, 0).await;
    let error = outcome.unwrap_err();
    assert_eq!(error.to_string(), "the head node requires a cluster token");
    assert!(error.is_fatal());
}

#[tokio::test]
async fn each_refusal_says_whether_trying_again_can_help() {
    let token = token();
    for (reason, fatal) in [
        ("unauthorized", true),
        (
            "stale incarnation 6 of dn1: incarnation 7 has registered since",
            true,
        ),
        ("node id dn1 is already in use by a live data node", false),
    ] {
        let (outcome, _, _) = run(Head::Refuse(reason), Some(&token), 0).await;
        let error = outcome.unwrap_err();
        assert_eq!(error.is_fatal(), fatal, "{reason}: {error:?}");
        assert!(error.to_string().ends_with(reason), "{error}");
    }
}
