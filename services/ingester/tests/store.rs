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
