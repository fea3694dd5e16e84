-- Foundation: devices, their presence, the latest value per device and metric, and dead letters.
-- Column names are a contract with the ingester and the registry: change them only with a new migration.

-- A device id is what appears in MQTT topics (`sensors/{device_id}/...`), so it is checked here too:
-- whatever path a row comes in by, the database never holds an id that could not be a topic level.
create table devices (
    id text primary key check (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    name text,
    tags text[] not null default '{}',
    metadata jsonb not null default '{}',
    -- True when the ingester created the row because a reading arrived from an unknown device.
    auto_registered boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- One row per device, from `devices/{id}/status` (including the broker's Last Will).
create table presence (
    device_id text primary key references devices (id) on delete cascade,
    online boolean not null,
    -- When anything was last heard from the device.
    last_seen timestamptz not null,
    -- When `online` last flipped.
    changed_at timestamptz not null
);

-- The newest reading per device and metric, kept apart from `readings`
-- so that dashboards and `devices/{id}/latest` never scan the partitioned table.
create table latest_readings (
    device_id text,
    metric text,
    ts timestamptz not null,
    value double precision not null,
    unit text,
    primary key (device_id, metric)
);

-- Payloads that could not be parsed are kept, not dropped, with the reason.
create table dead_letters (
    id bigserial primary key,
    received_at timestamptz not null default now(),
    topic text not null,
    payload bytea not null,
    reason text not null
);

-- Dead letters are listed newest first and pruned by age.
create index dead_letters_received_at on dead_letters (received_at);
