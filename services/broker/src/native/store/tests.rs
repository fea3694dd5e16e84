//! The store through its interface: round trips through close and open, the lock, torn and corrupt files, a
//! property test against an in-memory model, a SIGKILLed child process, and a throughput measurement.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn message(payload: &[u8], expires: Option<u64>) -> StoredMessage {
    StoredMessage { publish: Bytes::copy_from_slice(payload), expires_at_unix_ms: expires }
}

fn record(filters: &[&str]) -> SessionRecord {
    SessionRecord {
        expiry_secs: 3600,
        disconnected_at_unix_ms: Some(1_700_000_000_000),
        subscriptions: filters
            .iter()
            .enumerate()
            .map(|(i, filter)| StoredSubscription {
                filter: (*filter).to_owned(),
                qos: (i % 3) as u8,
                no_local: i % 2 == 0,
                retain_as_published: i % 2 == 1,
                retain_handling: (i % 3) as u8,
                subscription_id: (i % 2 == 0).then_some(i as u32 + 1),
            })
            .collect(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a test runtime")
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("the store dir")
        .map(|e| e.expect("an entry").metadata().expect("metadata").len())
        .sum()
}

fn newest_log(dir: &Path) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("the store dir")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    logs.sort();
    logs.pop().expect("a log")
}

#[test]
fn handles_and_commits_move_between_tasks() {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    fn sent<T: Send + 'static>() {}
    shared::<Store>();
    sent::<Commit>();
}

#[test]
fn every_op_round_trips_through_close_and_open() {
    for durability in [Durability::Sync, Durability::Periodic(Duration::from_millis(20))] {
        let dir = tempfile::tempdir().expect("a temp dir");
        runtime().block_on(async {
            let (store, recovered) = Store::open(dir.path(), durability).expect("opens");
            assert_eq!(recovered, Recovered::default());
            let big = vec![0xa5; 1 << 20];
            store.set_retained("a/b", Some(message(b"one", None))).await.expect("retained");
            store.set_retained("a/c", Some(message(&big, Some(42)))).await.expect("retained, 1 MiB");
            store.set_retained("a/d", Some(message(b"gone", None))).await.expect("retained");
            store.set_retained("a/d", None).await.expect("cleared");
            store.put_session("c1", record(&["x/#"])).await.expect("session");
            store.put_session("c1", record(&["$share/g/y/+", "z", "ü/#"])).await.expect("session replaced");
            store.put_session("c2", record(&[])).await.expect("session");
            store.put_session("gone", record(&["q"])).await.expect("session");
            for seq in 1..=5 {
                store.push("c1", seq, message(format!("m{seq}").as_bytes(), Some(seq))).await.expect("push");
            }
            store.push("c1", 3, message(b"m3 again", None)).await.expect("push replaces");
            store.push("c2", 9, message(&big, None)).await.expect("push, 1 MiB");
            store.push("gone", 1, message(b"x", None)).await.expect("push");
            store.remove("c1", 2).await.expect("remove");
            store.remove("c1", 77).await.expect("removing an absent message");
            store.delete_session("gone").await.expect("delete");
            store.close().await.expect("closes");

            let (store, recovered) = Store::open(dir.path(), durability).expect("opens again");
            let expected = Recovered {
                retained: vec![("a/b".into(), message(b"one", None)), ("a/c".into(), message(&big, Some(42)))],
                sessions: vec![
                    (
                        "c1".into(),
                        record(&["$share/g/y/+", "z", "ü/#"]),
                        vec![
                            (1, message(b"m1", Some(1))),
                            (3, message(b"m3 again", None)),
                            (4, message(b"m4", Some(4))),
                            (5, message(b"m5", Some(5))),
                        ],
                    ),
                    ("c2".into(), record(&[]), vec![(9, message(&big, None))]),
                ],
            };
            assert_eq!(recovered, expected, "{durability:?}");
            store.close().await.expect("closes");
        });
    }
}

#[test]
fn a_second_open_is_refused_until_the_first_store_closes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        let clone = store.clone();
        match Store::open(dir.path(), Durability::Sync) {
            Err(StoreError::InUse { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
            other => panic!("expected in use, got {other:?}"),
        }
        store.push("c", 1, message(b"p", None)).await.expect("push");
        store.close().await.expect("closes");
        // A handle left over sees the store closed, without blocking or panicking.
        assert!(matches!(clone.push("c", 2, message(b"p", None)).await, Err(StoreError::Closed)));
        drop(clone);
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens after close");
        // An orphan queue (no session record) is kept but not reported.
        assert!(recovered.sessions.is_empty());
        store.put_session("c", record(&[])).await.expect("session");
        store.close().await.expect("closes");
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens again");
        assert_eq!(recovered.sessions, vec![("c".into(), record(&[]), vec![(1, message(b"p", None))])]);
        // Dropping every handle also releases the lock, once the writer is done.
        drop(store);
        let reopened = wait_until(|| Store::open(dir.path(), Durability::Sync).ok());
        reopened.0.close().await.expect("closes");
    });
}

/// Retries `attempt` for a few seconds (the writer thread releases the lock shortly after the last handle goes).
fn wait_until<T>(mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_what_came_before_survives() {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        store.put_session("c", record(&["t"])).await.expect("session");
        store.push("c", 1, message(b"first", None)).await.expect("push");
        store.push("c", 2, message(&[7; 1000], None)).await.expect("push");
        store.close().await.expect("closes");
    });
    let log = newest_log(dir.path());
    let len = std::fs::metadata(&log).expect("the log").len();
    // Half of the last record, as if the process died while writing it.
    std::fs::OpenOptions::new().write(true).open(&log).expect("the log").set_len(len - 500).expect("cut");
    runtime().block_on(async {
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens a torn log");
        assert_eq!(recovered.sessions, vec![("c".into(), record(&["t"]), vec![(1, message(b"first", None))])]);
        // Appending after the cut leaves a log that replays whole.
        store.push("c", 3, message(b"third", None)).await.expect("push");
        store.close().await.expect("closes");
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens");
        let queue: Vec<u64> = recovered.sessions[0].2.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(queue, vec![1, 3]);
        store.close().await.expect("closes");
    });
    // A flipped byte in the last record: its checksum fails, so it counts as torn too.
    let len = std::fs::metadata(&log).expect("the log").len();
    let mut bytes = std::fs::read(&log).expect("the log");
    bytes[len as usize - 2] ^= 0xff;
    std::fs::write(&log, &bytes).expect("rewrite");
    runtime().block_on(async {
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens");
        let queue: Vec<u64> = recovered.sessions[0].2.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(queue, vec![1]);
        store.close().await.expect("closes");
    });
}

#[test]
fn damage_before_the_newest_log_is_reported_as_corruption() {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        store.push("c", 1, message(b"first", None)).await.expect("push");
        store.close().await.expect("closes");
    });
    // A later log makes the first one an older one, whose end must be whole.
    let first = newest_log(dir.path());
    std::fs::write(dir.path().join("log-00000000000000000001.wal"), b"FRTLOG01").expect("a second log");
    let len = std::fs::metadata(&first).expect("the log").len();
    std::fs::OpenOptions::new().write(true).open(&first).expect("the log").set_len(len - 3).expect("cut");
    match Store::open(dir.path(), Durability::Sync) {
        Err(StoreError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("expected corruption, got {other:?}"),
    }
    // The failed open released the lock.
    std::fs::remove_file(dir.path().join("log-00000000000000000001.wal")).expect("remove");
    let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens once the damage is the newest log's tail");
    runtime().block_on(store.close()).expect("closes");
}

#[test]
fn compaction_keeps_the_live_set_and_drops_the_dead() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let options = Options { compact_min_bytes: 64 << 10, ..Options::default() };
    let payload = vec![1; 500];
    runtime().block_on(async {
        let (store, _) =
            Store::open_with(dir.path(), Durability::Periodic(Duration::from_millis(5)), options).expect("opens");
        store.put_session("c", record(&["a"])).await.expect("session");
        store.set_retained("r", Some(message(b"kept", None))).await.expect("retained");
        for seq in 0..4000u64 {
            store.push("c", seq, message(&payload, None)).await.expect("push");
            // Every message but each hundredth is acknowledged a little later.
            if seq >= 10 && (seq - 10) % 100 != 0 {
                store.remove("c", seq - 10).await.expect("remove");
            }
        }
        store.close().await.expect("closes");
    });
    let written = 4000 * 530;
    let on_disk = dir_bytes(dir.path());
    assert!(on_disk < written / 4, "{on_disk} bytes on disk after writing {written}: no compaction");
    let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens");
    let queue: Vec<u64> = recovered.sessions[0].2.iter().map(|(seq, _)| *seq).collect();
    let expected: Vec<u64> = (0..3990).filter(|seq| seq % 100 == 0).chain(3990..4000).collect();
    assert_eq!(queue, expected);
    assert_eq!(recovered.retained, vec![("r".into(), message(b"kept", None))]);
    runtime().block_on(store.close()).expect("closes");
}

#[test]
fn a_push_and_remove_in_one_group_leave_nothing_and_an_older_copy_is_still_removed() {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        store.put_session("c", record(&[])).await.expect("session");
        store.push("c", 1, message(b"old copy", None)).await.expect("push");
        let before = std::fs::metadata(newest_log(dir.path())).expect("the log").len();
        // Issued back to back, these usually land in one group; the outcome must not depend on it.
        let commits = vec![
            store.push("c", 1, message(b"new copy", None)),
            store.remove("c", 1),
            store.push("c", 2, message(b"two", None)),
            store.remove("c", 2),
        ];
        for commit in commits {
            commit.await.expect("commit");
        }
        let after = std::fs::metadata(newest_log(dir.path())).expect("the log").len();
        assert!(after - before < 2 * 40, "wrote {} bytes for one removal", after - before);
        store.close().await.expect("closes");
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens");
        assert_eq!(recovered.sessions, vec![("c".into(), record(&[]), vec![])]);
        store.close().await.expect("closes");
    });
}

#[test]
fn an_oversized_record_fails_its_commit_only() {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        let huge = StoredMessage { publish: Bytes::from(vec![0; MAX_RECORD_BYTES + 1]), expires_at_unix_ms: None };
        assert!(matches!(store.push("c", 1, huge).await, Err(StoreError::TooLarge { .. })));
        store.put_session("c", record(&[])).await.expect("the store goes on");
        store.close().await.expect("closes");
    });
}

// ---- property test against a model ----

#[derive(Debug, Clone)]
enum ModelOp {
    SetRetained(String, Option<StoredMessage>),
    Put(String, SessionRecord),
    Delete(String),
    Push(String, u64, StoredMessage),
    Remove(String, u64),
    /// Wait for every outstanding Commit.
    Await,
    /// Close and open again, comparing what comes back with the model.
    Reopen,
}

#[derive(Debug, Default)]
struct Model {
    retained: BTreeMap<String, StoredMessage>,
    sessions: BTreeMap<String, (Option<SessionRecord>, BTreeMap<u64, StoredMessage>)>,
}

impl Model {
    fn apply(&mut self, op: &ModelOp) {
        match op {
            ModelOp::SetRetained(topic, Some(m)) => {
                self.retained.insert(topic.clone(), m.clone());
            }
            ModelOp::SetRetained(topic, None) => {
                self.retained.remove(topic);
            }
            ModelOp::Put(client, record) => self.sessions.entry(client.clone()).or_default().0 = Some(record.clone()),
            ModelOp::Delete(client) => {
                self.sessions.remove(client);
            }
            ModelOp::Push(client, seq, m) => {
                self.sessions.entry(client.clone()).or_default().1.insert(*seq, m.clone());
            }
            ModelOp::Remove(client, seq) => {
                if let Some(session) = self.sessions.get_mut(client) {
                    session.1.remove(seq);
                }
            }
            ModelOp::Await | ModelOp::Reopen => {}
        }
    }

    fn expected(&self) -> Recovered {
        Recovered {
            retained: self.retained.iter().map(|(t, m)| (t.clone(), m.clone())).collect(),
            sessions: self
                .sessions
                .iter()
                .filter_map(|(client, (record, queue))| {
                    Some((client.clone(), record.clone()?, queue.iter().map(|(s, m)| (*s, m.clone())).collect()))
                })
                .collect(),
        }
    }
}

fn message_strategy() -> impl Strategy<Value = StoredMessage> {
    (prop::collection::vec(any::<u8>(), 0..300), any::<Option<u64>>())
        .prop_map(|(payload, expires)| message(&payload, expires))
}

fn record_strategy() -> impl Strategy<Value = SessionRecord> {
    let subscription = ("[a-z/+#$]{0,12}", 0u8..3, any::<bool>(), any::<bool>(), 0u8..3, any::<Option<u32>>())
        .prop_map(|(filter, qos, no_local, retain_as_published, retain_handling, subscription_id)| {
            StoredSubscription { filter, qos, no_local, retain_as_published, retain_handling, subscription_id }
        });
    (any::<u32>(), any::<Option<u64>>(), prop::collection::vec(subscription, 0..4)).prop_map(
        |(expiry_secs, disconnected_at_unix_ms, subscriptions)| SessionRecord {
            expiry_secs,
            disconnected_at_unix_ms,
            subscriptions,
        },
    )
}

fn op_strategy() -> impl Strategy<Value = ModelOp> {
    // Few names and sequence numbers, so that ops collide.
    let client = prop::sample::select(vec!["a", "b", "ç/∂"]).prop_map(str::to_owned);
    let topic = prop::sample::select(vec!["t/1", "t/2", "t/ü"]).prop_map(str::to_owned);
    let seq = 0u64..6;
    prop_oneof![
        2 => (topic, prop::option::of(message_strategy())).prop_map(|(t, m)| ModelOp::SetRetained(t, m)),
        2 => (client.clone(), record_strategy()).prop_map(|(c, r)| ModelOp::Put(c, r)),
        1 => client.clone().prop_map(ModelOp::Delete),
        5 => (client.clone(), seq.clone(), message_strategy()).prop_map(|(c, s, m)| ModelOp::Push(c, s, m)),
        4 => (client, seq).prop_map(|(c, s)| ModelOp::Remove(c, s)),
        1 => Just(ModelOp::Await),
        1 => Just(ModelOp::Reopen),
    ]
}

async fn run_model_case(dir: &Path, durability: Durability, ops: &[ModelOp]) -> Result<(), TestCaseError> {
    // A tiny compaction threshold and pending bound, so that both come into play.
    let options = Options { compact_min_bytes: 2048, max_pending_bytes: 1024 };
    let (mut store, recovered) = Store::open_with(dir, durability, options).expect("opens");
    prop_assert_eq!(recovered, Recovered::default());
    let mut model = Model::default();
    let mut commits = Vec::new();
    for op in ops {
        model.apply(op);
        match op.clone() {
            ModelOp::SetRetained(topic, m) => commits.push(store.set_retained(&topic, m)),
            ModelOp::Put(client, record) => commits.push(store.put_session(&client, record)),
            ModelOp::Delete(client) => commits.push(store.delete_session(&client)),
            ModelOp::Push(client, seq, m) => commits.push(store.push(&client, seq, m)),
            ModelOp::Remove(client, seq) => commits.push(store.remove(&client, seq)),
            ModelOp::Await => {
                for commit in commits.drain(..) {
                    prop_assert!(commit.await.is_ok());
                }
            }
            ModelOp::Reopen => {
                // Commits not awaited are written all the same.
                commits.clear();
                store.close().await.expect("closes");
                let (reopened, recovered) = Store::open_with(dir, durability, options).expect("opens again");
                prop_assert_eq!(recovered, model.expected());
                store = reopened;
            }
        }
    }
    drop(commits);
    store.close().await.expect("closes");
    let (store, recovered) = Store::open_with(dir, durability, options).expect("opens at the end");
    prop_assert_eq!(recovered, model.expected());
    store.close().await.expect("closes");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_op_sequences_recover_as_the_model_says(
        ops in prop::collection::vec(op_strategy(), 0..120),
        sync in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let durability = if sync { Durability::Sync } else { Durability::Periodic(Duration::from_millis(10)) };
        runtime().block_on(run_model_case(dir.path(), durability, &ops))?;
    }
}

// ---- a child process killed mid-stream ----

/// Set for the child process: the store directory it writes to, and its round (a prefix of its client ids).
const CRASH_CHILD_DIR: &str = "FERRITE_STORE_TEST_CRASH_DIR";
const CRASH_CHILD_ROUND: &str = "FERRITE_STORE_TEST_CRASH_ROUND";
/// Writers in the child.
const CRASH_WRITERS: u64 = 8;

/// The payload of message `seq` of `client`: recognisable, and now and then big enough to span many pages.
fn crash_payload(client: &str, seq: u64) -> Vec<u8> {
    let mut payload = format!("{client}:{seq}:").into_bytes();
    let size = if seq % 10 == 3 { 64 << 10 } else { 200 };
    payload.resize(size, (seq % 251) as u8);
    payload
}

/// The child: writers that push, remove every other message and set a retained value, printing each Commit that
/// completed. Without [`CRASH_CHILD_DIR`] it returns at once, as an ordinary test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_CHILD_DIR) else {
        return;
    };
    let round = std::env::var(CRASH_CHILD_ROUND).expect("the round");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async move {
        let (store, _) = Store::open(Path::new(&dir), Durability::Sync).expect("the child opens the store");
        let (lines, mut printed) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut writers = Vec::new();
        for w in 0..CRASH_WRITERS {
            let store = store.clone();
            let lines = lines.clone();
            let round = round.clone();
            writers.push(tokio::spawn(async move {
                let client = format!("r{round}-w{w}");
                store.put_session(&client, record(&["x/#"])).await.expect("session");
                let _ = lines.send(format!("session {client}"));
                for seq in 0.. {
                    let m = message(&crash_payload(&client, seq), None);
                    store.push(&client, seq, m).await.expect("push");
                    let _ = lines.send(format!("pushed {client} {seq}"));
                    if seq % 2 == 0 {
                        let _ = lines.send(format!("removing {client} {seq}"));
                        store.remove(&client, seq).await.expect("remove");
                        let _ = lines.send(format!("removed {client} {seq}"));
                    }
                    let retained = message(&crash_payload(&client, seq), None);
                    store.set_retained(&format!("retained/{client}"), Some(retained)).await.expect("retain");
                    let _ = lines.send(format!("retained {client} {seq}"));
                }
            }));
        }
        drop(lines);
        let mut stdout = std::io::stdout();
        println!("child-started");
        while let Some(line) = printed.recv().await {
            // Printed only after the Commit completed; written straight to the pipe.
            writeln!(stdout, "{line}").expect("stdout");
            stdout.flush().expect("stdout");
        }
    });
}

#[derive(Default)]
struct Reported {
    sessions: Vec<String>,
    pushed: Vec<(String, u64)>,
    removing: std::collections::HashSet<(String, u64)>,
    removed: std::collections::HashSet<(String, u64)>,
    retained: BTreeMap<String, u64>,
}

/// Runs the child for `round` until it has reported `kill_after` completed commits, SIGKILLs it, and collects
/// every line it printed.
fn run_child_and_kill(dir: &Path, round: u32, kill_after: usize) -> Reported {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "native::store::tests::crash_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir)
        .env(CRASH_CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the test binary runs itself");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut reported = Reported::default();
    let mut lines = stdout.lines();
    let mut done = 0;
    let mut killed = false;
    for line in lines.by_ref() {
        let line = line.expect("a line from the child");
        let words: Vec<&str> = line.split(' ').collect();
        let key = |words: &[&str]| (words[1].to_owned(), words[2].parse::<u64>().expect("a seq"));
        match words[0] {
            "session" => reported.sessions.push(words[1].to_owned()),
            "pushed" => reported.pushed.push(key(&words)),
            "removing" => {
                reported.removing.insert(key(&words));
            }
            "removed" => {
                reported.removed.insert(key(&words));
            }
            "retained" => {
                let (client, seq) = key(&words);
                reported.retained.insert(client, seq);
            }
            _ => continue,
        }
        done += 1;
        if done == kill_after && !killed {
            // SIGKILL; the lines already in the pipe are still read below.
            child.kill().expect("kill the child");
            killed = true;
        }
    }
    let status = child.wait().expect("wait for the child");
    assert!(killed, "the child ended by itself ({status}) after {done} lines");
    reported
}

#[test]
fn a_sigkilled_writer_loses_no_completed_commit() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut all = Reported::default();
    // Three rounds on the same directory: each recovers what the previous crash left, then crashes again.
    for (round, kill_after) in [(0, 2_000), (1, 700), (2, 4_000)] {
        let reported = run_child_and_kill(dir.path(), round, kill_after);
        all.sessions.extend(reported.sessions);
        all.pushed.extend(reported.pushed);
        all.removing.extend(reported.removing);
        all.removed.extend(reported.removed);
        all.retained.extend(reported.retained);
        let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens after the kill");
        runtime().block_on(store.close()).expect("closes");
        let queues: BTreeMap<&str, &Vec<(u64, StoredMessage)>> =
            recovered.sessions.iter().map(|(client, _, queue)| (client.as_str(), queue)).collect();
        for client in &all.sessions {
            assert!(queues.contains_key(client.as_str()), "session {client} reported stored, not recovered");
        }
        // Every message recovered is whole and is one that was pushed.
        for (client, queue) in &queues {
            for (seq, m) in queue.iter() {
                assert_eq!(m.publish, crash_payload(client, *seq), "message {client} {seq} recovered wrong");
            }
        }
        let present = |client: &str, seq: u64| queues.get(client).is_some_and(|q| q.iter().any(|(s, _)| *s == seq));
        for (client, seq) in &all.pushed {
            let key = (client.clone(), *seq);
            if all.removed.contains(&key) {
                assert!(!present(client, *seq), "{client} {seq}: its removal completed, yet it came back");
            } else if !all.removing.contains(&key) {
                assert!(present(client, *seq), "{client} {seq}: its push completed, yet it is lost");
            }
        }
        let retained: BTreeMap<&str, &StoredMessage> =
            recovered.retained.iter().map(|(topic, m)| (topic.as_str(), m)).collect();
        for (client, seq) in &all.retained {
            let m = retained.get(format!("retained/{client}").as_str()).expect("a retained value reported stored");
            let text = String::from_utf8_lossy(&m.publish[..m.publish.len().min(40)]).into_owned();
            let got: u64 = text.split(':').nth(1).and_then(|s| s.parse().ok()).expect("a retained payload");
            assert!(got >= *seq, "retained/{client}: {got} recovered, {seq} reported stored");
            assert_eq!(m.publish, crash_payload(client, got));
        }
        eprintln!(
            "round {round}: {} pushes, {} removals reported; {} messages recovered",
            all.pushed.len(),
            all.removed.len(),
            queues.values().map(|q| q.len()).sum::<usize>()
        );
    }
}

// ---- a write that fails ----

/// Set for the child process of the write-error test: its store directory.
const FSIZE_CHILD_DIR: &str = "FERRITE_STORE_TEST_FSIZE_DIR";

/// The child: runs under a file size limit (`ulimit -f`, with SIGXFSZ ignored, so a write past it fails with
/// EFBIG), pushes 100 KiB messages until one fails, then checks the store goes on. Without [`FSIZE_CHILD_DIR`]
/// it returns at once.
/// A 100 KiB payload that says which message it is.
fn big_payload(seq: u64) -> Vec<u8> {
    let mut payload = format!("big:{seq}:").into_bytes();
    payload.resize(100 << 10, (seq % 251) as u8);
    payload
}

#[test]
fn write_error_child() {
    let Ok(dir) = std::env::var(FSIZE_CHILD_DIR) else {
        return;
    };
    runtime().block_on(async {
        let (store, _) = Store::open(Path::new(&dir), Durability::Sync).expect("the child opens the store");
        store.put_session("c", record(&[])).await.expect("session");
        let mut stored = Vec::new();
        let mut failed = None;
        for seq in 0..640u64 {
            match store.push("c", seq, message(&big_payload(seq), None)).await {
                Ok(()) => stored.push(seq.to_string()),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let failed = failed.expect("a write past the file size limit failed");
        assert!(matches!(failed, StoreError::Io { .. }), "{failed:?}");
        println!("push-failed {failed}");
        // The failed write was cut off, and a smaller one still fits.
        store.push("c", 100_000, message(b"small", None)).await.expect("a small push after the failure");
        store.close().await.expect("the child closes the store");
        println!("stored {}", stored.join(","));
    });
}

#[test]
fn a_failed_write_fails_its_commit_and_leaves_the_log_whole() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let exe = std::env::current_exe().expect("the test binary");
    // 4096 blocks: 2 MiB in 512-byte blocks (dash, POSIX) or 4 MiB in 1 KiB blocks (bash); either is far below
    // the 640 pushes of ~100 KiB the child tries.
    let output = Command::new("sh")
        .args(["-c", "ulimit -f 4096 && trap '' XFSZ && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(["--exact", "native::store::tests::write_error_child", "--nocapture", "--test-threads=1"])
        .env(FSIZE_CHILD_DIR, dir.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("sh runs the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed ({}): {stdout}", output.status);
    assert!(stdout.contains("push-failed"), "{stdout}");
    let stored: Vec<u64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("stored "))
        .expect("the child lists what it stored")
        .split(',')
        .map(|seq| seq.parse().expect("a seq"))
        .collect();
    assert!(stored.len() > 5, "{stored:?}");
    let (store, recovered) = Store::open(dir.path(), Durability::Sync).expect("opens");
    runtime().block_on(store.close()).expect("closes");
    let mut expected: Vec<(u64, StoredMessage)> =
        stored.iter().map(|seq| (*seq, message(&big_payload(*seq), None))).collect();
    expected.push((100_000, message(b"small", None)));
    assert_eq!(recovered.sessions, vec![("c".into(), record(&[]), expected)]);
}

// ---- throughput, measured not asserted ----

/// Commits per second of 200-byte pushes with `writers` concurrent tasks, each waiting for its Commit, and each
/// message removed (acknowledged) right after, as a subscriber would.
fn measure(durability: Durability, writers: usize, run_for: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let (store, _) = Store::open(dir.path(), durability).expect("opens");
        let start = Instant::now();
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let client = format!("client-{w}");
                    let payload = Bytes::from(vec![0x5a; 200]);
                    let mut count = 0u64;
                    while start.elapsed() < run_for {
                        let m = StoredMessage { publish: payload.clone(), expires_at_unix_ms: None };
                        store.push(&client, count, m).await.expect("push");
                        // Not awaited: dropping the Commit does not cancel the write.
                        drop(store.remove(&client, count));
                        count += 1;
                    }
                    count
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.expect("writer");
        }
        let elapsed = start.elapsed().as_secs_f64();
        store.close().await.expect("closes");
        total as f64 / elapsed
    })
}

#[test]
fn throughput_of_sync_and_periodic_durability() {
    for durability in [Durability::Sync, Durability::Periodic(Duration::from_millis(500))] {
        for writers in [1, 16, 256] {
            let rate = measure(durability, writers, Duration::from_secs(1));
            eprintln!("store throughput: {durability:?}, {writers} writers of 200-byte messages: {rate:.0} pushes/s");
            assert!(rate > 0.0, "nothing was stored");
        }
    }
}

/// The write path alone, shaped like the redb comparison in the report: groups of `group` pushes of 200 bytes
/// (each removing the message pushed 100 before, as acknowledgements would), submitted at once and awaited
/// together, so that each group is one write and one fsync.
fn measure_groups(group: u64, run_for: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("a temp dir");
    runtime().block_on(async {
        let (store, _) = Store::open(dir.path(), Durability::Sync).expect("opens");
        let payload = Bytes::from(vec![0x5a; 200]);
        let start = Instant::now();
        let mut seq = 0;
        while start.elapsed() < run_for {
            let mut commits = Vec::with_capacity(2 * group as usize);
            for _ in 0..group {
                let m = StoredMessage { publish: payload.clone(), expires_at_unix_ms: None };
                commits.push(store.push("client-1", seq, m));
                if seq >= 100 {
                    commits.push(store.remove("client-1", seq - 100));
                }
                seq += 1;
            }
            for commit in commits {
                commit.await.expect("commit");
            }
        }
        let rate = seq as f64 / start.elapsed().as_secs_f64();
        store.close().await.expect("closes");
        rate
    })
}

#[test]
fn throughput_of_the_write_path_by_group_size() {
    for group in [1, 16, 256] {
        let rate = measure_groups(group, Duration::from_secs(1));
        eprintln!("store write path: Sync, {group} pushes (+ removals) per fsync'd group: {rate:.0} pushes/s");
        assert!(rate > 0.0, "nothing was stored");
    }
}
