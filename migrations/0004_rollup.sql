-- A 1-minute rollup of readings, kept longer than the raw readings, and the horizon before which only the rollup remains.

-- One row per device, metric and UTC minute, recomputed in full from the raw readings of that minute,
-- so that any aggregate over whole minutes (avg, min, max, sum, count, first, last) survives the raw readings' retention.
create table readings_1m (
    device_id text not null,
    metric text not null,
    -- The minute's start.
    bucket timestamptz not null,
    count bigint not null,
    sum double precision not null,
    min double precision not null,
    max double precision not null,
    -- The values with the earliest and the latest timestamp in the minute.
    first double precision not null,
    last double precision not null,
    primary key (device_id, metric, bucket)
);

-- Rollup rows are pruned by age.
create index readings_1m_bucket on readings_1m (bucket);

-- Single-row bookkeeping: `rolled_up_to` is where the rollup has got to (every minute before it is in readings_1m,
-- as of when it was rolled up); `raw_from` is where the raw readings begin since retention last dropped any
-- (queries read the rollup for what lies before it).
create table readings_rollup_state (
    id boolean primary key default true check (id),
    rolled_up_to timestamptz,
    raw_from timestamptz
);
insert into readings_rollup_state (id) values (true);

-- Recomputes the rollup of every minute in [from_ts, to_ts) (both rounded down to the minute) from the raw readings,
-- and returns how many (device, metric, minute) rows it wrote. Running it again over the same range is harmless.
create function ferrite_rollup_readings(from_ts timestamptz, to_ts timestamptz)
returns bigint
language sql
set search_path from current
as $$
    with rolled as (
        insert into readings_1m (device_id, metric, bucket, count, sum, min, max, first, last)
        select device_id, metric, date_bin('1 minute', ts, timestamptz '1970-01-01 00:00:00+00'),
               count(*), sum(value), min(value), max(value),
               (array_agg(value order by ts))[1], (array_agg(value order by ts desc))[1]
        from readings
        where ts >= date_bin('1 minute', from_ts, timestamptz '1970-01-01 00:00:00+00')
          and ts < date_bin('1 minute', to_ts, timestamptz '1970-01-01 00:00:00+00')
        group by 1, 2, 3
        on conflict (device_id, metric, bucket) do update
            set count = excluded.count, sum = excluded.sum, min = excluded.min, max = excluded.max,
                first = excluded.first, last = excluded.last
        returning 1
    )
    select count(*) from rolled;
$$;
