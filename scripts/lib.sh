# Shared by the scripts that start and stop the test engines (sourced, not run).
# Each function takes what it needs as arguments: the scripts keep their own variables.

# The Engine API on unix socket $1 answers /_ping.
ping_ok() {
  curl -fsS --max-time 2 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

# Wait until the API on socket $1 answers: $2 tries, 0.2 s apart. With $3 (a pid file) give up
# as soon as that process is gone. Returns 1 if it never answered.
wait_for_ping() {
  local sock=$1 tries=$2 pidfile=${3:-}
  for _ in $(seq 1 "$tries"); do
    ping_ok "$sock" && return 0
    if [ -n "$pidfile" ] && ! kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; then
      return 1
    fi
    sleep 0.2
  done
  ping_ok "$sock"
}

# Stop the process in pid file $1 (SIGTERM, then SIGKILL after $2 tenths of a second) and
# remove the pid file.
stop_pidfile() {
  local pidfile=$1 tenths=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 "$tenths"); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
