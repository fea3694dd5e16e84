#!/bin/sh
# Entry point of the compose profile `mosquitto`: writes Mosquitto's password file from the service secrets
# (FERRITE_SERVICE_SECRET_*, the same ones the embedded broker takes), then runs Mosquitto with mosquitto.conf.
set -eu
here=$(dirname "$0")
passwd=/mosquitto/data/passwd
umask 077
mosquitto_passwd -c -b "$passwd" ferrite-ingester "${FERRITE_SERVICE_SECRET_INGESTER:?is not set}"
mosquitto_passwd -b "$passwd" ferrite-gateway "${FERRITE_SERVICE_SECRET_GATEWAY:?is not set}"
mosquitto_passwd -b "$passwd" ferrite-fleet "${FERRITE_SERVICE_SECRET_FLEET:?is not set}"
mosquitto_passwd -b "$passwd" ferrite-api "${FERRITE_SERVICE_SECRET_API:?is not set}"
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
  # Mosquitto drops to its own user: it owns its data; the password file stays root's, readable by its group.
  chown -R mosquitto:mosquitto /mosquitto/data
  chown root:mosquitto "$passwd"
  chmod 0640 "$passwd"
fi
exec mosquitto -c "$here/mosquitto.conf"
