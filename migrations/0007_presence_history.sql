-- Presence history: each change of a device's `online` flag, for the dashboard's device page
-- (`GET /api/v1/devices/{id}/presence`). A trigger on `presence` writes it, so every writer of presence
-- (the ingester, tests, any other) records history without knowing of it.
-- Bounded: the newest 200 changes per device are kept (a flapping device cannot grow the table).
create table presence_history (
    device_id text not null references devices (id) on delete cascade,
    changed_at timestamptz not null,
    online boolean not null,
    primary key (device_id, changed_at, online)
);

create function ferrite_record_presence()
returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' or new.online is distinct from old.online then
        insert into presence_history (device_id, changed_at, online)
        values (new.device_id, new.changed_at, new.online)
        on conflict do nothing;
        -- Keep the newest 200 (the primary key's index serves both statements).
        delete from presence_history
        where device_id = new.device_id
          and changed_at < (
              select changed_at from presence_history
              where device_id = new.device_id
              order by changed_at desc
              offset 199 limit 1
          );
    end if;
    return null;
end;
$$;

create trigger presence_history
after insert or update on presence
for each row execute function ferrite_record_presence();

-- What is known already becomes the first entry of each device's history.
insert into presence_history (device_id, changed_at, online)
select device_id, changed_at, online from presence;
