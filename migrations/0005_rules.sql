-- Threshold rules and the alerts they raise.

create table rules (
    id uuid primary key,
    name text not null check (length(name) between 1 and 200),
    metric text not null check (metric ~ '^[A-Za-z0-9_.-]{1,64}$'),
    comparison text not null check (comparison in ('>', '>=', '<', '<=', '==', '!=')),
    threshold double precision not null,
    -- The condition must hold this long (by the readings' timestamps) before the rule fires.
    for_ms bigint not null default 0 check (for_ms >= 0),
    -- Selector: one device, and/or devices carrying all of `tags`; neither means every device.
    device_id text check (device_id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    tags text[] not null default '{}',
    severity text not null check (severity in ('info', 'warning', 'critical')),
    message text not null,
    enabled boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- One row per firing; firing again after a resolution is a new row.
-- `rule_id` is cleared when the rule is deleted, so the history outlives it (the name is kept beside it).
create table alerts (
    id uuid primary key,
    rule_id uuid references rules (id) on delete set null,
    rule_name text not null,
    device_id text not null,
    metric text not null,
    severity text not null,
    state text not null check (state in ('firing', 'resolved')),
    value double precision not null,
    threshold double precision not null,
    message text not null,
    -- The timestamp of the reading that fired the rule.
    fired_at timestamptz not null,
    resolved_at timestamptz,
    check ((state = 'resolved') = (resolved_at is not null))
);

-- At most one firing alert per rule and device, whatever number of engines evaluate:
-- an engine fires by inserting, and a conflict means the alert is firing already.
create unique index alerts_one_firing on alerts (rule_id, device_id) where state = 'firing';
create index alerts_fired_at on alerts (fired_at desc);
create index alerts_device on alerts (device_id, fired_at desc);

-- Announces every change to `rules` on the channel `ferrite_rules`, so that engines reload at once instead of polling.
-- NOTIFY is delivered at commit; several changes in one transaction arrive as one notification.
create function ferrite_notify_rules()
returns trigger
language plpgsql
as $$
begin
    perform pg_notify('ferrite_rules', '');
    return null;
end;
$$;

create trigger rules_notify
after insert or update or delete or truncate on rules
for each statement execute function ferrite_notify_rules();
