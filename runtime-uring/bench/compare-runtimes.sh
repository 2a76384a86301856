#!/usr/bin/env bash
# The broker on io_uring (the default Linux build) against the broker on tokio
# (--no-default-features --features tokio), in the same run, with promptmq-bench.
#
#   runtime-uring/bench/compare-runtimes.sh
#   ROUNDS=5 DURATION=10 runtime-uring/bench/compare-runtimes.sh
#
# Runtimes compared (one binary per build; the io_uring variants differ only by environment):
#   tokio        the tokio build
#   io_uring     the default build, ring flags COOP_TASKRUN|TASKRUN_FLAG|SINGLE_ISSUER
#   uring-plain  the default build with PROMPTMQ_URING_SETUP=none (monoio's default ring)
#   uring-defer  the default build with DEFER_TASKRUN added
#   epoll        the default build with PROMPTMQ_FORCE_EPOLL=1 (monoio's epoll driver)
#   tokio-alt    another tokio binary given as TOKIO_ALT_BIN (e.g. built from an older commit)
#
# Scenarios (MQTT 5, 8 publishers -> 8 subscribers, one topic per pair, 64 B payloads):
#   q0, q1            QoS 0 / QoS 1 as fast as the broker takes them
#   q0-20k, q1-20k    QoS 0 / QoS 1 at a fixed 20,000 msgs/s in total
#
# Every run gets a freshly started broker (--cores 2, defaults otherwise), and the runs are
# interleaved (round 1: every scenario on every runtime, then round 2, ...) so that a noisy
# moment on the shared machine hits all runtimes alike; the tables show the median of the
# rounds. Broker CPU comes from /proc/PID/stat (utime+stime) over the measured window
# (promptmq-bench --pid); CPU per message = broker CPU seconds / delivered messages.
#
# Environment: ROUNDS (3), DURATION (5), WARMUP (1), DRAIN (2), PORT (18870), RUNTIMES
# (the list above), OUT (default target/bench/runtimes-<time>), QUIET_PCT (25) and
# QUIET_WAIT (60): before each run, wait at most QUIET_WAIT s until the rest of the machine
# uses less than QUIET_PCT % of a core. Everything is on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
DRAIN=${DRAIN:-2}
PORT=${PORT:-18870}
QUIET_PCT=${QUIET_PCT:-25}
QUIET_WAIT=${QUIET_WAIT:-60}
RUNTIMES=${RUNTIMES:-"tokio io_uring uring-plain uring-defer epoll"}
OUT=${OUT:-target/bench/runtimes-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { echo "compare-runtimes: $*" >&2; }

TARGET_DIR=${CARGO_TARGET_DIR:-target}
log "building the tokio build"
cargo build --release --quiet -p promptmq --no-default-features --features tokio
cp "$TARGET_DIR/release/promptmq" "$OUT/promptmq-tokio"
log "building the io_uring build (default) and the load generator"
cargo build --release --quiet -p promptmq -p promptmq-bench
cp "$TARGET_DIR/release/promptmq" "$OUT/promptmq-uring"
cp "$TARGET_DIR/release/promptmq-bench" "$OUT/promptmq-bench"

machine_busy_pct() { # busy CPU of the whole machine over 1 s, in % of one core
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat)
  sleep 1
  b=$(awk '/^cpu /{print $2+$3+$4+$9}' /proc/stat)
  echo $(((b - a) * 100 / $(getconf CLK_TCK)))
}
wait_quiet() {
  local waited=0 busy
  while busy=$(machine_busy_pct); [ "$busy" -ge "$QUIET_PCT" ]; do
    if [ "$waited" -ge "$QUIET_WAIT" ]; then
      log "machine still busy (${busy}% of a core): measuring anyway (see other CPU)"
      return
    fi
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

start_broker() { # runtime log
  local runtime=$1 logf=$2 bin="$OUT/promptmq-uring" data="$OUT/data"
  local -a envs=(env -u PROMPTMQ_FORCE_EPOLL -u PROMPTMQ_URING_SETUP)
  case $runtime in
    tokio) bin="$OUT/promptmq-tokio" ;;
    tokio-alt) bin=${TOKIO_ALT_BIN:?TOKIO_ALT_BIN must name a promptmq binary} ;;
    io_uring) ;;
    uring-plain) envs+=(PROMPTMQ_URING_SETUP=none) ;;
    uring-defer) envs+=("PROMPTMQ_URING_SETUP=coop_taskrun,taskrun_flag,single_issuer,defer_taskrun") ;;
    epoll) envs+=(PROMPTMQ_FORCE_EPOLL=1) ;;
    *) log "unknown runtime $runtime"; return 1 ;;
  esac
  rm -rf "$data"
  "${envs[@]}" "$bin" --bind "127.0.0.1:$PORT" --cores 2 --data-dir "$data" --log-level info >"$logf" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 100); do
    grep -q "listening on" "$logf" 2>/dev/null && return 0
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "$runtime did not start: $(tail -3 "$logf")"
  return 1
}

SCENARIOS=(
  "q0|--qos 0"
  "q1|--qos 1"
  "q0-20k|--qos 0 --rate 20000"
  "q1-20k|--qos 1 --rate 20000"
)

for round in $(seq "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    name=${s%%|*}
    args=${s#*|}
    for runtime in $RUNTIMES; do
      base="$OUT/$name.$runtime.$round"
      wait_quiet
      start_broker "$runtime" "$base.broker.log" || { stop_broker; continue; }
      log "round $round: $name on $runtime ($(grep -o 'runtime [^,]*' "$base.broker.log"))"
      # shellcheck disable=SC2086 # args is a word list on purpose
      timeout --kill-after=5 $((WARMUP + DURATION + DRAIN + 60)) "$OUT/promptmq-bench" pairs \
        --publishers 8 --subscribers 8 --payload 64 $args --port "$PORT" --pid "$BROKER_PID" \
        --warmup "$WARMUP" --duration "$DURATION" --drain "$DRAIN" --json >"$base.json" 2>"$base.log" || true
      stop_broker
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$RUNTIMES" >"$OUT/results.md" <<'EOF'
import json, os, statistics, sys
out, rounds, runtimes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
scen = [("q0", "pairs 8×8 QoS 0, full speed"), ("q1", "pairs 8×8 QoS 1, full speed"),
        ("q0-20k", "pairs 8×8 QoS 0, 20k msgs/s"), ("q1-20k", "pairs 8×8 QoS 1, 20k msgs/s")]
def load(s, r, i):
    try:
        with open(f"{out}/{s}.{r}.{i}.json") as f:
            return json.load(f)
    except Exception:
        return None
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def get(j, k):
    v = j.get(k) if j else None
    return v if isinstance(v, (int, float)) else None
def cpu_us(j):
    c, d = get(j, "broker_cpu_pct"), get(j, "delivered_per_sec")
    return c / 100 / d * 1e6 if c is not None and d else None
def f(v, nd=0):
    return "-" if v is None else (f"{v:,.{nd}f}")
print(f"Median of {rounds} interleaved rounds. CPU per message = broker utime+stime over the measured window / delivered messages.\n")
print("| Scenario | Runtime | delivered msgs/s | p50 µs | p99 µs | broker CPU % | broker CPU µs/msg | delivered vs tokio | CPU/msg vs tokio | other CPU % |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for s, label in scen:
    base = None
    for r in runtimes:
        js = [load(s, r, i) for i in range(1, rounds + 1)]
        d = med([get(j, "delivered_per_sec") for j in js])
        p50 = med([get(j, "p50_us") for j in js])
        p99 = med([get(j, "p99_us") for j in js])
        c = med([get(j, "broker_cpu_pct") for j in js])
        cu = med([cpu_us(j) for j in js])
        other = med([get(j, "other_cpu_pct") for j in js])
        if r == "tokio" or base is None:
            base = (d, cu)
        rd = f"{d / base[0]:.2f}" if base and base[0] and d else "-"
        rc = f"{cu / base[1]:.2f}" if base and base[1] and cu else "-"
        print(f"| {label} | {r} | {f(d)} | {f(p50)} | {f(p99)} | {f(c)} | {f(cu, 2)} | {rd} | {rc} | {f(other)} |")
print("\nEvery round (delivered msgs/s / p99 µs / broker CPU µs per message):\n")
print("| Scenario | Runtime | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " |")
print("|---|---|" + "---:|" * rounds)
for s, label in scen:
    for r in runtimes:
        cells = []
        for i in range(1, rounds + 1):
            j = load(s, r, i)
            cells.append("failed" if j is None else f"{f(get(j, 'delivered_per_sec'))} / {f(get(j, 'p99_us'))} / {f(cpu_us(j), 2)}")
        print(f"| {s} | {r} | " + " | ".join(cells) + " |")
EOF
cat "$OUT/results.md"
log "results in $OUT/results.md"
