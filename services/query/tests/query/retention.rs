//! Retention: whole expired day partitions are dropped, recent ones and the default partition stay,
//! and expired rows in the default partition are deleted.

use std::time::Duration;

use ferrite_query::Retention;
use ferrite_testkit::TestDb;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Readings per day offset from today (UTC, by the database's clock), as (days ago, rows).
async fn rows_by_day(pool: &PgPool) -> anyhow::Result<Vec<(i32, i64)>> {
    Ok(sqlx::query_as(
        "select ((now() at time zone 'UTC')::date - (ts at time zone 'UTC')::date)::integer as ago, count(*)
         from readings group by ago order by ago desc",
    )
    .fetch_all(pool)
    .await?)
}

async fn partition_exists(pool: &PgPool, days_ago: i32) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "select to_regclass('readings_' || to_char((now() at time zone 'UTC')::date - $1, 'YYYYMMDD')) is not null",
    )
    .bind(days_ago)
    .fetch_one(pool)
    .await?)
}

#[tokio::test]
async fn expired_partitions_are_dropped() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let pool = db.pool();
    // Partitions for 40 to 28 days ago; 50 days ago has none, so its rows sit in the default partition.
    sqlx::query(
        "select ferrite_ensure_readings_partitions((now() at time zone 'UTC')::date - 40, (now() at time zone 'UTC')::date - 28)",
    )
    .execute(pool)
    .await?;
    // Two readings at noon UTC on each of these days (and today), for two devices.
    sqlx::query(
        "insert into readings (device_id, metric, ts, value)
         select device, 'temperature', ((now() at time zone 'UTC')::date - ago)::timestamp at time zone 'UTC' + interval '12 hours', ago
         from unnest(array[50, 40, 31, 30, 29, 0]) as ago, unnest(array['a', 'b']) as device",
    )
    .execute(pool)
    .await?;
    let in_default: i64 = sqlx::query_scalar("select count(*) from readings_default").fetch_one(pool).await?;
    assert_eq!(in_default, 2, "the day without a partition lands in the default partition");

    // 30 days: the day 30 days ago is partly within the retention and stays, older days go.
    let dropped = ferrite_db::drop_expired_partitions(pool, 30 * DAY).await?;
    let today: chrono::NaiveDate =
        sqlx::query_scalar("select (now() at time zone 'UTC')::date").fetch_one(pool).await?;
    let expected: Vec<String> =
        (31..=40).rev().map(|ago| format!("readings_{}", (today - chrono::Days::new(ago)).format("%Y%m%d"))).collect();
    assert_eq!(dropped, expected);
    assert_eq!(rows_by_day(pool).await?, [(30, 2), (29, 2), (0, 2)]);
    assert!(!partition_exists(pool, 40).await? && !partition_exists(pool, 31).await?);
    assert!(partition_exists(pool, 30).await? && partition_exists(pool, 28).await?);
    let default_left: bool =
        sqlx::query_scalar("select to_regclass('readings_default') is not null").fetch_one(pool).await?;
    assert!(default_left, "the default partition is never dropped");

    // Nothing more has expired: a second round drops nothing.
    assert_eq!(ferrite_db::drop_expired_partitions(pool, 30 * DAY).await?, Vec::<String>::new());
    // A retention of a century keeps everything.
    assert!(ferrite_db::drop_expired_partitions(pool, 100 * 365 * DAY).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_retention_task_drops_on_its_schedule() -> anyhow::Result<()> {
    let db = TestDb::new().await?;
    let pool = db.pool().clone();
    assert!(Retention::new(pool.clone(), DAY, DAY).is_err(), "a retention shorter than two days is refused");
    assert!(Retention::new(pool.clone(), 30 * DAY, Duration::ZERO).is_err(), "a zero interval is refused");

    sqlx::query(
        "select ferrite_ensure_readings_partitions((now() at time zone 'UTC')::date - 10, (now() at time zone 'UTC')::date - 10)",
    )
    .execute(&pool)
    .await?;
    let retention = Retention::new(pool.clone(), 3 * DAY, Duration::from_secs(3600))?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(retention.run(shutdown.clone()));
    ferrite_testkit::wait_for("the task to drop the partition of 10 days ago", || {
        let pool = pool.clone();
        async move { !partition_exists(&pool, 10).await.unwrap_or(true) }
    })
    .await?;
    assert!(partition_exists(&pool, 1).await?, "yesterday's partition stays");
    shutdown.cancel();
    tokio::time::timeout(ferrite_testkit::WAIT_DEADLINE, task).await??;
    Ok(())
}
