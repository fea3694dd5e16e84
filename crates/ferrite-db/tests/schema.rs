//! The migrated schema against a real PostgreSQL: migrations, readings partitions and the device id check.

use std::time::{Duration, Instant};

use anyhow::Context;
use ferrite_testkit::TestDb;
use sqlx::{AssertSqlSafe, PgPool};

#[tokio::test]
async fn migrate_is_idempotent() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    // TestDb has migrated once already; further runs find nothing to do.
    ferrite_db::migrate(db.pool()).await?;
    ferrite_db::migrate(db.pool()).await?;
    let applied: i64 =
        sqlx::query_scalar("select count(*) from _sqlx_migrations where success").fetch_one(db.pool()).await?;
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations"))?
        .filter(|entry| entry.as_ref().is_ok_and(|entry| entry.file_name().to_string_lossy().ends_with(".sql")))
        .count();
    assert_eq!(usize::try_from(applied)?, files);
    Ok(())
}

#[tokio::test]
async fn a_fresh_database_has_partitions_from_yesterday_to_a_week_ahead() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let missing: Vec<String> = sqlx::query_scalar(
        "select 'readings_' || to_char(day, 'YYYYMMDD')
           from generate_series((now() at time zone 'UTC')::date - 1,
                                (now() at time zone 'UTC')::date + 7,
                                interval '1 day') as day
          where to_regclass('readings_' || to_char(day, 'YYYYMMDD')) is null",
    )
    .fetch_all(db.pool())
    .await?;
    assert!(missing.is_empty(), "missing partitions: {missing:?}");
    Ok(())
}

#[tokio::test]
async fn rows_of_a_new_day_move_from_the_default_partition() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    // Day boundaries must be UTC whatever the session says; Chatham is UTC+12:45 or +13:45.
    let pool = ferrite_db::connect(db.connect_options().options([("TimeZone", "Pacific/Chatham")])).await?;
    // A device whose clock is a month behind: the first and last instants of its UTC day, and the next day's first.
    sqlx::query(
        "with day as (select (now() at time zone 'UTC')::date - 30 as d)
         insert into readings (device_id, metric, ts, value)
         select 'sim-0001', 'temperature', t, v
           from day, lateral (values
               (d::timestamp at time zone 'UTC', 1.0),
               ((d + 1)::timestamp at time zone 'UTC' - interval '1 microsecond', 2.0),
               ((d + 1)::timestamp at time zone 'UTC', 3.0)) as r(t, v)",
    )
    .execute(&pool)
    .await?;
    assert_eq!(
        partitions_by_value(&pool).await?,
        vec!["readings_default"; 3],
        "no partition exists yet for a month ago"
    );

    let created = ferrite_db::ensure_partitions(&pool, 40, 0).await?;
    assert!(created >= 30, "created only {created} partitions");
    let expected: Vec<String> = sqlx::query_scalar(
        "select 'readings_' || to_char((now() at time zone 'UTC')::date - d, 'YYYYMMDD')
           from unnest(array[30, 30, 29]) as d",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(partitions_by_value(&pool).await?, expected);
    let left_in_default: i64 = sqlx::query_scalar("select count(*) from readings_default").fetch_one(&pool).await?;
    assert_eq!(left_in_default, 0);

    assert_eq!(ferrite_db::ensure_partitions(&pool, 40, 0).await?, 0, "a second call finds everything in place");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn concurrent_ensure_partitions_calls_all_succeed() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let before = partition_count(db.pool()).await?;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let pool = db.pool().clone();
            tokio::spawn(async move { ferrite_db::ensure_partitions(&pool, 60, 30).await })
        })
        .collect();
    let mut created = 0;
    for call in calls {
        created += call.await.context("an ensure_partitions task panicked")??;
    }
    let after = partition_count(db.pool()).await?;
    assert_eq!(i64::from(created), after - before, "every partition is created exactly once");
    assert!(after - before >= 80, "only {} new partitions", after - before);
    Ok(())
}

#[tokio::test]
async fn an_insert_racing_a_new_partition_lands_in_it() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let day = "((now() at time zone 'UTC')::date - 20)";
    let mut ensuring = db.pool().begin().await?;
    let created: i32 =
        sqlx::query_scalar(AssertSqlSafe(format!("select ferrite_ensure_readings_partitions({day}, {day})")))
            .fetch_one(&mut *ensuring)
            .await?;
    assert_eq!(created, 1);

    // An ingester writing a reading for that day while the partition is being created.
    let pool = db.pool().clone();
    let insert = tokio::spawn(async move {
        sqlx::query(AssertSqlSafe(format!(
            "insert into readings (device_id, metric, ts, value)
             values ('sim-0001', 'temperature', {day}::timestamp at time zone 'UTC' + interval '12 hours', 1)"
        )))
        .execute(&pool)
        .await
    });
    // Commit only once the insert is waiting for us, which is the interleaving that used to fail.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like 'insert into readings%'",
        )
        .fetch_one(db.pool())
        .await?;
        if waiting > 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the insert never waited for the partition's transaction");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ensuring.commit().await?;
    insert.await.context("the insert task panicked")??;

    let expected: String =
        sqlx::query_scalar(AssertSqlSafe(format!("select 'readings_' || to_char({day}, 'YYYYMMDD')")))
            .fetch_one(db.pool())
            .await?;
    assert_eq!(partitions_by_value(db.pool()).await?, vec![expected]);
    Ok(())
}

#[tokio::test]
async fn device_ids_are_checked() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let longest = "x".repeat(64);
    let too_long = "x".repeat(65);
    let cases: &[(&str, bool)] = &[
        ("sim-0001", true),
        ("Kitchen.Sensor_2", true),
        (&longest, true),
        ("", false),
        (&too_long, false),
        ("bad id", false),
        ("a/b", false),
        ("sensors/+", false),
        ("caf\u{e9}", false),
        ("trailing-newline\n", false),
    ];
    for (id, valid) in cases {
        check_device_id(db.pool(), id, *valid).await?;
    }
    Ok(())
}

async fn check_device_id(pool: &PgPool, id: &str, valid: bool) -> anyhow::Result<()> {
    let result = sqlx::query("insert into devices (id) values ($1)").bind(id).execute(pool).await;
    match (result, valid) {
        (Ok(_), true) => Ok(()),
        (Err(sqlx::Error::Database(err)), false) if err.is_check_violation() => Ok(()),
        (result, _) => anyhow::bail!("id {id:?} (valid: {valid}) gave {result:?}"),
    }
}

/// The partition holding each reading, in the order of their values.
async fn partitions_by_value(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar("select tableoid::regclass::text from readings order by value").fetch_all(pool).await?)
}

async fn partition_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from pg_inherits where inhparent = 'readings'::regclass")
        .fetch_one(pool)
        .await?)
}
