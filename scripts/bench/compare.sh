#!/usr/bin/env bash
# PromptMQ against mosquitto, in the same run, with the same load generator (promptmq-bench).
#
#   scripts/bench/compare.sh                 # 5 s measured per scenario, 10,000 idle connections
#   DURATION=10 CONNS=2000 scripts/bench/compare.sh
#   ONLY="rate20k conns" scripts/bench/compare.sh   # some scenarios (names in SCENARIOS)
#
# Environment: DURATION (measured seconds, default 5), WARMUP (1), DRAIN (2), CONNS (10000),
# MQTT (5), PORT (18830), OUT (where the JSON, logs and results.md go; default
# target/bench/compare-<time>), QUIET_WAIT (seconds to wait, before each run, for the rest of
# the machine to use less than QUIET_PCT (20) % of one core; default 120).
#
# Each scenario runs against a freshly started broker, one broker at a time: mosquitto first,
# then PromptMQ. The table goes to stdout and to $OUT/results.md. Both brokers are killed at
# the end, also on error or Ctrl-C. Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-2}
CONNS=${CONNS:-10000}
MQTT=${MQTT:-5}
PORT=${PORT:-18830}
QUIET_WAIT=${QUIET_WAIT:-120}
QUIET_PCT=${QUIET_PCT:-20}
OUT=${OUT:-target/bench/compare-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

log() { echo "compare.sh: $*" >&2; }

# Thousands of connections: each broker and the generator need a file descriptor per
# connection. Raise the soft limit as far as the hard limit allows.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
log "open-files limit: $NOFILE"

MOSQUITTO=$(command -v mosquitto || true)
[ -n "$MOSQUITTO" ] || { [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto; } || true
if [ -z "$MOSQUITTO" ]; then
  log "installing mosquitto (Debian package)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
  MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi

log "building release binaries"
cargo build --release --quiet -p promptmq -p promptmq-bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
PROMPTMQ="$TARGET_DIR/release/promptmq"
BENCH="$TARGET_DIR/release/promptmq-bench"

# The stated mosquitto configuration: queues and in-flight windows large enough that QoS 1
# is never dropped in these scenarios, no persistence, Nagle off like PromptMQ (which sets
# TCP_NODELAY on every connection) and like the generator.
MOSQ_CONF="$OUT/mosquitto.conf"
cat >"$MOSQ_CONF" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
connection_messages false
EOF

# Busy CPU of the whole machine over one second, in % of one core (user+nice+system+steal).
machine_busy_pct() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat)
  echo $(( (b - a) * 100 / $(getconf CLK_TCK) ))
}
# The cores are shared: wait (bounded) until nothing else is running before a measurement.
wait_quiet() {
  local waited=0 busy
  while busy=$(machine_busy_pct); [ "$busy" -ge "$QUIET_PCT" ]; do
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      log "machine still busy (${busy}% of a core used by others): measuring anyway, see the other-CPU column"
      return
    fi
    [ "$waited" -eq 0 ] && log "waiting for the machine to be quiet (${busy}% of a core busy)"
    waited=$((waited + 1))
  done
}

BROKER_PID=""
stop_broker() {
  if [ -n "$BROKER_PID" ]; then
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
  fi
}
trap stop_broker EXIT
trap 'stop_broker; exit 130' INT TERM

wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$BROKER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

start_broker() { # mosquitto|promptmq, log file
  local name=$1 logf=$2
  # The previous broker's port must be free again (TIME-WAIT does not block a listener).
  if [ "$name" = mosquitto ]; then
    "$MOSQUITTO" -c "$MOSQ_CONF" >"$logf" 2>&1 &
  else
    local data="$OUT/promptmq-data"
    rm -rf "$data"
    # Its defaults as released (queues of 1,000 messages, WAL in immediate mode): unlike
    # mosquitto's stated configuration above, nothing raised.
    "$PROMPTMQ" --bind "127.0.0.1:$PORT" --cores 2 --data-dir "$data" --log-level warn >"$logf" 2>&1 &
  fi
  BROKER_PID=$!
  wait_port || { log "$name did not start: $(tail -3 "$logf")"; return 1; }
}

# name | generator arguments
SCENARIOS=(
  "pairs-q0|pairs --publishers 8 --subscribers 8 --qos 0 --payload 64"
  "pairs-q1|pairs --publishers 8 --subscribers 8 --qos 1 --payload 64"
  "fanin|fanin --publishers 16 --subscribers 1 --qos 0 --payload 64"
  "fanout|fanout --publishers 1 --subscribers 16 --qos 0 --payload 64"
  "pairs-1k|pairs --publishers 8 --subscribers 8 --qos 0 --payload 1024"
  "rate20k|pairs --publishers 8 --subscribers 8 --qos 0 --payload 64 --rate 20000"
  "conns|conns --connections $CONNS"
)

# --- the table ---
jget() { # file key -> value (flat JSON from --json)
  [ -f "$1" ] || return 0
  sed -n "s/.*\"$2\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" "$1" | tr -d '"'
}
val() { # scenario broker key -> value, or the failure
  local s=${STATUS[$1.$2]:-failed} v
  case $s in
    hung|crashed) echo "$s"; return ;;
  esac
  v=$(jget "$OUT/$1.$2.json" "$3")
  if [ -z "$v" ]; then echo "${s/ok/-}"; elif [ "$v" = null ]; then echo "n/a"; else echo "$v"; fi
}
isnum() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }
fmt() { # number -> rounded, or passes text through
  if isnum "$1"; then
    awk -v v="$1" 'BEGIN{ if (v >= 100 || v <= -100) printf "%.0f", v; else printf "%.1f", v }'
  else
    echo "$1"
  fi
}
mib() { if isnum "$1"; then awk -v v="$1" 'BEGIN{ printf "%.0f", v / 1024 }'; else echo "$1"; fi; }
ratio() { # mosquitto promptmq -> promptmq / mosquitto
  if isnum "$1" && isnum "$2"; then
    awk -v a="$2" -v b="$1" 'BEGIN{ if (b == 0) print "-"; else printf "%.2f", a / b }'
  else
    echo "-"
  fi
}
row() { # label scenario key
  local m p
  m=$(val "$2" mosquitto "$3"); p=$(val "$2" promptmq "$3")
  echo "| $1 | $(fmt "$m") | $(fmt "$p") | $(ratio "$m" "$p") |"
}
note() { # scenario broker -> a short status when not clean, and repeated runs
  local s=${STATUS[$1.$2]:-failed} e r=${RUNS[$1.$2]:-1} out=""
  e=$(jget "$OUT/$1.$2.json" first_error)
  [ "$s" = ok ] || out="$s${e:+: $e}"
  [ "$r" -gt 1 ] && out="${out:+$out; }attempt $r (busy machine)"
  echo "$out"
}

run_one() { # name args broker -> sets STATUS[name.broker], writes $OUT/name.broker.*
  local name=$1 args=$2 broker=$3 base="$OUT/$1.$3" rc=0 timing
  wait_quiet
  start_broker "$broker" "$base.broker.log" || { STATUS[$name.$broker]=failed; stop_broker; return; }
  log "$name on $broker: promptmq-bench $args"
  # conns holds its connections for 3 s; the others run warm-up + measured + drain.
  if [ "$name" = conns ]; then timing="--duration 3"; else
    timing="--warmup $WARMUP --duration $DURATION --drain $DRAIN"; fi
  # shellcheck disable=SC2086 # args and timing are word lists on purpose
  timeout --kill-after=5 "$(awk -v a="$WARMUP" -v b="$DURATION" -v c="$DRAIN" 'BEGIN{print int(a+b+c+90)}')" \
    "$BENCH" $args $timing --port "$PORT" --pid "$BROKER_PID" --mqtt "$MQTT" --json \
    >"$base.json" 2>"$base.log" || rc=$?
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    STATUS[$name.$broker]=crashed
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    STATUS[$name.$broker]=hung
  elif ! grep -q '"broker"' "$base.json" 2>/dev/null; then
    STATUS[$name.$broker]=failed
  elif [ "$rc" -ne 0 ]; then
    STATUS[$name.$broker]=errors
  else
    STATUS[$name.$broker]=ok
  fi
  stop_broker
  grep -v '^\[' "$base.log" | tail -4 >&2 || true
}

# status of each run: ok | errors | failed | hung | crashed; RUNS: attempts made
declare -A STATUS RUNS
for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}
  args=${entry#*|}
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  for broker in mosquitto promptmq; do
    # A run during which other processes took more than QUIET_PCT % of a core is repeated,
    # at most twice; the last attempt is kept either way (and shows its other-CPU figure).
    for attempt in 1 2 3; do
      RUNS[$name.$broker]=$attempt
      run_one "$name" "$args" "$broker"
      other=$(jget "$OUT/$name.$broker.json" other_cpu_pct)
      if ! { isnum "$other" && awk -v o="$other" -v q="$QUIET_PCT" 'BEGIN{exit !(o > q)}'; }; then break; fi
      if [ "$attempt" -lt 3 ]; then log "$name on $broker: other processes used ${other}% of a core: run again"; fi
    done
  done
done

{
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), kernel $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1); PromptMQ: $("$PROMPTMQ" --version); commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "Each run: MQTT $MQTT, ${WARMUP} s warm-up, ${DURATION} s measured, up to ${DRAIN} s drain, a freshly started broker; repeated (at most 3 attempts) when other processes used more than ${QUIET_PCT} % of a core; open-files limit $NOFILE"
  echo
  echo "| Scenario (higher is better unless noted) | mosquitto | PromptMQ | PromptMQ / mosquitto |"
  echo "|---|---:|---:|---:|"
  row "pairs 8×8 QoS 0 64 B: delivered msgs/s" pairs-q0 delivered_per_sec
  row "pairs 8×8 QoS 1 64 B: delivered msgs/s" pairs-q1 delivered_per_sec
  row "fan-in 16→1 QoS 0: delivered msgs/s" fanin delivered_per_sec
  row "fan-out 1→16 QoS 0: deliveries/s" fanout delivered_per_sec
  row "pairs 8×8 QoS 0 1 KiB: delivered msgs/s" pairs-1k delivered_per_sec
  row "fixed 20k msgs/s pairs 8×8: p50 µs (lower is better)" rate20k p50_us
  row "fixed 20k msgs/s pairs 8×8: p99 µs (lower is better)" rate20k p99_us
  row "fixed 20k msgs/s pairs 8×8: p99.9 µs (lower is better)" rate20k p999_us
  row "$CONNS idle connections: bytes per connection (lower is better)" conns bytes_per_conn
  echo
  echo "Details (lost = measured messages not delivered by the end of the drain; late = delivered only after the publishers stopped; CPU in % of one core over the measured window; other CPU = everything else on the machine, which should be near 0):"
  echo
  echo "| Scenario | Broker | sent msgs/s | delivered msgs/s | lost (%) | late | p50 µs | p99 µs | p99.9 µs | max µs | broker CPU % | generator CPU % | other CPU % | broker peak RSS MiB | notes |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for entry in "${SCENARIOS[@]}"; do
    name=${entry%%|*}
    [ "$name" = conns ] && continue
    for broker in mosquitto promptmq; do
      echo "| $name | $broker | $(fmt "$(val "$name" "$broker" sent_per_sec)") | $(fmt "$(val "$name" "$broker" delivered_per_sec)") | $(val "$name" "$broker" lost) ($(fmt "$(val "$name" "$broker" loss_pct)")) | $(val "$name" "$broker" delivered_late) | $(fmt "$(val "$name" "$broker" p50_us)") | $(fmt "$(val "$name" "$broker" p99_us)") | $(fmt "$(val "$name" "$broker" p999_us)") | $(fmt "$(val "$name" "$broker" max_us)") | $(fmt "$(val "$name" "$broker" broker_cpu_pct)") | $(fmt "$(val "$name" "$broker" bench_cpu_pct)") | $(fmt "$(val "$name" "$broker" other_cpu_pct)") | $(mib "$(val "$name" "$broker" broker_peak_rss_kb)") | $(note "$name" "$broker") |"
    done
  done
  echo
  echo "| $CONNS idle connections | connected | failed | connect s | RSS before KiB | RSS after KiB | bytes/conn | other CPU % | notes |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
  for broker in mosquitto promptmq; do
    echo "| $broker | $(val conns "$broker" connected) | $(val conns "$broker" failed) | $(fmt "$(val conns "$broker" connect_secs)") | $(val conns "$broker" rss_before_kb) | $(val conns "$broker" rss_after_kb) | $(fmt "$(val conns "$broker" bytes_per_conn)") | $(fmt "$(val conns "$broker" other_cpu_pct)") | $(note conns "$broker") |"
  done
} | tee "$OUT/results.md"
log "JSON, logs and results.md are in $OUT"
