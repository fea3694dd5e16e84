//! The batch writer against a real PostgreSQL: redelivered readings and concurrent transactions over the same rows.

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use ferrite_ingester::batch::Batch;
use ferrite_ingester::store::{self, Outcome};
use ferrite_testkit::TestDb;

/// A batch of `count` JSON readings with their own timestamps, `devices` devices taking turns, the first at `first`.
fn readings(first: i64, count: i64, devices: i64) -> Batch {
    let mut batch = Batch::default();
    for n in first..first + count {
        let topic = format!("sensors/dev-{:03}/temperature", n % devices);
        let payload = format!(r#"{{"value": {n}, "ts": {}}}"#, 1_795_600_800_000 + n);
        batch.classify(&topic, &Bytes::from(payload), None, false, Utc::now());
    }
    batch
}

async fn count(db: &TestDb, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(db.pool()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_twice_is_stored_once() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let db = TestDb::new().await?;
    let first = store::write(db.pool(), &readings(0, 500, 10)).await?;
    assert_eq!(first, Outcome { stored: 500, ..Outcome::default() });
    // Half of it again (a redelivery after a reconnect) with 250 new readings: the plain insert is refused and
    // the batch is written again without the duplicates.
    let again = store::write(db.pool(), &readings(250, 500, 10)).await?;
    assert_eq!(again, Outcome { stored: 250, duplicates: 250, ..Outcome::default() });
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await?, 750);
    let latest: f64 =
        sqlx::query_scalar("SELECT value FROM latest_readings WHERE device_id = 'dev-009' AND metric = 'temperature'")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(latest, 749.0, "the newest reading of dev-009 is number 749");
    let last_seen: chrono::DateTime<Utc> =
        sqlx::query_scalar("SELECT last_seen FROM presence WHERE device_id = 'dev-009'").fetch_one(db.pool()).await?;
    assert!(last_seen > Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(), "last seen when written: {last_seen}");
    Ok(())
}

/// Several writers commit at once and their batches share rows (latest values and presence of the same devices,
/// and here the same readings): each reading is stored once, and none of them fails with a deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_batches_store_each_reading_once() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let db = TestDb::new().await?;
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6 {
        // Batches of 400 starting 200 apart: every reading is in two batches.
        let batch = readings(writer * 200, 400, 50);
        let pool = db.pool().clone();
        writers.spawn(async move { store::write(&pool, &batch).await });
    }
    let mut stored = 0;
    let mut duplicates = 0;
    while let Some(outcome) = writers.join_next().await {
        let outcome = outcome??;
        stored += outcome.stored;
        duplicates += outcome.duplicates;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await?, 1400);
    assert_eq!((stored, duplicates), (1400, 6 * 400 - 1400));
    assert_eq!(count(&db, "SELECT count(*) FROM latest_readings").await?, 50);
    let newest: f64 = sqlx::query_scalar("SELECT max(value) FROM latest_readings").fetch_one(db.pool()).await?;
    assert_eq!(newest, 1399.0);
    Ok(())
}

/// One reading the database refuses (a NUL in its metric, which only a bug past the parser could produce) among
/// 300 valid ones, plus a dead letter the database would refuse too: the batch is bisected, every valid reading is
/// stored, the bad one becomes a dead letter with the database's reason, and the write does not fail (so nothing
/// is retried forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poison_row_among_valid_ones_becomes_a_dead_letter() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let db = TestDb::new().await?;
    let mut batch = readings(0, 300, 7);
    let mut poison = batch.readings[150].clone();
    poison.metric = "bad\0metric".into();
    batch.readings.insert(150, poison);
    batch.dead_letters.push(ferrite_ingester::batch::DeadLetter {
        topic: "sensors/raw\0topic".into(),
        payload: Bytes::from_static(b"\0\0"),
        reason: "built by hand, bypassing its sanitising".into(),
        kind: "payload",
    });
    let outcome = store::write(db.pool(), &batch).await?;
    assert_eq!(outcome.stored, 300);
    assert_eq!(outcome.refused, 1);
    assert_eq!(outcome.dead_lettered, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM readings").await?, 300);
    let letters: Vec<(String, Vec<u8>, String)> =
        sqlx::query_as("SELECT topic, payload, reason FROM dead_letters ORDER BY id").fetch_all(db.pool()).await?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let (topic, payload, reason) = &letters[0];
    assert_eq!(topic, "sensors/dev-003/bad\\0metric");
    assert!(String::from_utf8_lossy(payload).contains("\"value\":150"), "{payload:?}");
    assert!(reason.contains("invalid byte sequence") && reason.contains("22021"), "{reason}");
    let (topic, payload, reason) = &letters[1];
    assert_eq!((topic.as_str(), payload.as_slice()), ("", b"".as_slice()));
    assert!(reason.contains("built by hand") && reason.contains("22021"), "{reason}");
    Ok(())
}

/// A latest value stamped far in the future (stored before reading times were bounded) no longer wins over every
/// later reading: any reading replaces a latest value beyond the window's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_future_latest_value_is_replaced() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let db = TestDb::new().await?;
    sqlx::query("INSERT INTO devices (id) VALUES ('probe')").execute(db.pool()).await?;
    sqlx::query(
        "INSERT INTO latest_readings (device_id, metric, ts, value) VALUES ('probe', 't', '9999-01-01T00:00:00Z', 1)",
    )
    .execute(db.pool())
    .await?;
    let mut batch = Batch::default();
    batch.classify("sensors/probe/t", &Bytes::from_static(b"99"), None, false, Utc::now());
    store::write(db.pool(), &batch).await?;
    let latest: f64 =
        sqlx::query_scalar("SELECT value FROM latest_readings WHERE device_id = 'probe' AND metric = 't'")
            .fetch_one(db.pool())
            .await?;
    assert_eq!(latest, 99.0);
    Ok(())
}

/// Dead letters past their retention are pruned, newer ones kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_dead_letters_are_pruned() -> anyhow::Result<()> {
    ferrite_testkit::init_test_tracing();
    let db = TestDb::new().await?;
    sqlx::query(
        "INSERT INTO dead_letters (received_at, topic, payload, reason)
         SELECT now() - make_interval(days => n, hours => 12), 't', '', 'r' FROM generate_series(0, 59) AS n",
    )
    .execute(db.pool())
    .await?;
    let pruned = store::prune_dead_letters(db.pool(), std::time::Duration::from_secs(30 * 24 * 3600)).await?;
    assert_eq!(pruned, 30, "30.5 to 59.5 days old");
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await?, 30);
    assert_eq!(store::prune_dead_letters(db.pool(), std::time::Duration::MAX).await?, 0);
    Ok(())
}
