#!/bin/sh
# Runs once, on an empty data volume: the read-only role Grafana's datasource logs in as
# (provisioning/datasources/cityops.yaml). Tables created later by `cityops db migrate` are covered
# by the default privileges.
set -eu
: "${GRAFANA_DB_PASSWORD:?set GRAFANA_DB_PASSWORD: Grafana's read-only database password}"
psql -v ON_ERROR_STOP=1 -v pw="$GRAFANA_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE grafana_reader LOGIN PASSWORD :'pw';
GRANT CONNECT ON DATABASE cityops TO grafana_reader;
GRANT USAGE ON SCHEMA public TO grafana_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE cityops IN SCHEMA public GRANT SELECT ON TABLES TO grafana_reader;
SQL
