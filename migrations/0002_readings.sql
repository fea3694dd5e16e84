-- Readings, partitioned by UTC day so that retention drops whole partitions instead of deleting rows.

create table readings (
    device_id text not null,
    metric text not null,
    ts timestamptz not null,
    value double precision not null,
    unit text,
    received_at timestamptz not null default now(),
    primary key (device_id, metric, ts)
) partition by range (ts);

-- Catches rows for days that have no partition yet (a device with a wrong clock, a late batch),
-- so that an insert never fails for lack of a partition.
-- ferrite_ensure_readings_partitions moves such rows out when it creates their day's partition.
create table readings_default partition of readings default;

-- Creates the missing daily partitions `readings_YYYYMMDD` for every UTC day in [from_day, to_day]
-- and returns how many it created.
-- A name that already exists is left alone (it may be a partition detached on purpose).
-- Callers may run it concurrently (every ingester does at start and then daily):
-- a transaction-scoped advisory lock makes them take turns, and each one re-checks what exists.
-- Call it in a transaction of its own: one that has already written to readings could deadlock with another caller.
-- Rows that already sit in the default partition for a new day are moved into the new partition
-- in the same transaction, because attaching (or creating) a partition fails while the default holds rows of its range.
create function ferrite_ensure_readings_partitions(from_day date, to_day date)
returns integer
language plpgsql
-- Pinned so that the function finds `readings` whatever search_path the caller has.
set search_path from current
as $$
declare
    day date;
    partition_name text;
    lower_bound timestamptz;
    upper_bound timestamptz;
    created integer := 0;
begin
    if from_day is null or to_day is null then
        raise exception 'ferrite_ensure_readings_partitions: from_day and to_day must not be null';
    end if;
    -- A typo in a caller should not create a hundred thousand tables.
    if to_day - from_day > 3660 then
        raise exception 'ferrite_ensure_readings_partitions: % to % spans more than ten years', from_day, to_day;
    end if;

    -- The two-key form keeps this lock apart from sqlx's single-key migration lock;
    -- keying it on the table's oid gives every database its own lock.
    perform pg_advisory_xact_lock('readings'::regclass::oid::integer, 0);

    day := from_day;
    while day <= to_day loop
        partition_name := 'readings_' || to_char(day, 'YYYYMMDD');
        if to_regclass(quote_ident(partition_name)) is null then
            if created = 0 then
                -- Hold off writers to readings until we commit. Otherwise an insert that planned its routing
                -- before the new partition existed lands in the default partition after the attach,
                -- and fails there with "violates partition constraint". Readers are not blocked,
                -- and a call with nothing to create takes no lock at all.
                lock table readings in share mode;
            end if;
            lower_bound := day::timestamp at time zone 'UTC';
            upper_bound := (day + 1)::timestamp at time zone 'UTC';
            execute format('create table %I (like readings including all)', partition_name);
            execute format(
                'with moved as (delete from readings_default where ts >= $1 and ts < $2 returning *) '
                'insert into %I select * from moved',
                partition_name
            ) using lower_bound, upper_bound;
            -- %L renders the bounds with their UTC offset, so the session's TimeZone does not matter.
            execute format(
                'alter table readings attach partition %I for values from (%L) to (%L)',
                partition_name, lower_bound, upper_bound
            );
            created := created + 1;
        end if;
        day := day + 1;
    end loop;
    return created;
end;
$$;

-- A freshly migrated database is ready for yesterday to a week ahead;
-- the ingester keeps the window moving with ferrite_db::ensure_partitions.
select ferrite_ensure_readings_partitions(
    (now() at time zone 'UTC')::date - 1,
    (now() at time zone 'UTC')::date + 7
);
