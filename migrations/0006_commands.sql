-- Commands sent to devices and their outcomes.

create table commands (
    id uuid primary key,
    device_id text not null references devices (id) on delete cascade,
    name text not null check (length(name) between 1 and 64),
    params jsonb not null default '{}',
    -- pending: the device was offline, the broker holds the command for its session;
    -- sent: published to an online device; ok / error: the device answered; timed_out: no answer in time
    -- (a late answer still moves it to ok or error).
    state text not null check (state in ('pending', 'sent', 'ok', 'error', 'timed_out')),
    result jsonb,
    timeout_ms bigint not null check (timeout_ms > 0),
    created_at timestamptz not null default now(),
    completed_at timestamptz
);

-- A device's history, newest first.
create index commands_device on commands (device_id, created_at desc);
