# Runs postgres for ferrite-db and makes sure it never outlives the process that started it.
# Usage: sh watchdog.sh LOG_FILE REMOVE_DIR POSTGRES_COMMAND... (REMOVE_DIR empty to keep the directory)
# Standard input is a pipe whose only writer is the starting process; it never writes,
# so end-of-file means that process has stopped it or died (even by SIGKILL), and the server is shut down.
set -u
log=$1
remove=$2
shift 2
# Keep the pipe as fd 3: a background job's standard input would otherwise be /dev/null.
exec 3<&0 </dev/null >>"$log" 2>&1
"$@" 3<&- &
server=$!
{
    while read -r _ <&3; do :; done
    # SIGINT asks postgres for a fast shutdown: roll back open transactions, checkpoint, exit.
    kill -INT "$server" 2>/dev/null
} &
guard=$!
exec 3<&-
wait "$server"
status=$?
kill "$guard" 2>/dev/null
# Reap it, so that it does not linger as a zombie under an init that never reaps.
wait "$guard" 2>/dev/null
# Only after a clean shutdown: a failed start (say, the port was taken) is retried in the same directory.
if [ "$status" -eq 0 ] && [ -n "$remove" ]; then
    rm -rf -- "$remove"
fi
exit "$status"
