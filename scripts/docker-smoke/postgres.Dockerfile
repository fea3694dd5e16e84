# A stand-in for the official postgres:15 image where no image registry is reachable (scripts/docker-smoke.sh
# --local-base): Debian's PostgreSQL 15 with the part of the official entrypoint the compose file relies on
# (POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB create the role and database on first start; pg_isready).
ARG BASE=ferrite-smoke/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
# The server's socket is in /tmp; PGHOST points pg_isready and psql there.
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data PGHOST=/tmp
# Owned by postgres in the image, so a fresh named volume mounted here is too.
RUN mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"
COPY --chmod=0755 postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
