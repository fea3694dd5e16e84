-- The device registry: MQTT credentials per device, API tokens, and presence changes announced to listeners.

-- One secret per device, stored as an argon2 PHC string (algorithm, parameters and salt included),
-- so that the hashing cost can be raised later without invalidating existing secrets.
create table device_credentials (
    device_id text primary key references devices (id) on delete cascade,
    secret_hash text not null,
    created_at timestamptz not null default now()
);

-- Tokens for the REST and gRPC APIs. A token is 256 random bits, so a fast hash (SHA-256) is as safe
-- as a slow one here and lets every request be checked with one indexed lookup.
create table api_tokens (
    id uuid primary key,
    name text not null,
    token_sha256 bytea not null unique,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);

-- Announces every change of a device's `online` flag on the channel `ferrite_presence`,
-- so that the registry streams presence without polling. The payload is small JSON:
-- {"device_id": ..., "online": ..., "changed_at": ..., "last_seen": ...}.
-- NOTIFY is delivered at commit, so listeners never see a change that was rolled back.
create function ferrite_notify_presence()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' or new.online is distinct from old.online then
        perform pg_notify('ferrite_presence', json_build_object(
            'device_id', new.device_id,
            'online', new.online,
            'changed_at', new.changed_at,
            'last_seen', new.last_seen
        )::text);
    end if;
    return null;
end;
$$;

create trigger presence_notify
after insert or update on presence
for each row execute function ferrite_notify_presence();

-- Devices are listed by tag with `tags @> array[...]`.
create index devices_tags on devices using gin (tags);
