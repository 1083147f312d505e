#!/usr/bin/env bash
# Benchmarks chatgate against the mock upstream and writes docs/benchmarks.md.
#
#   benches/run.sh                      # SQLite
#   CHATGATE_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres benches/run.sh   # and PostgreSQL
#
# Everything runs on this machine: the mock upstream, chatgate and the load generator share its cores, so the
# numbers are conservative. Needs jq. Each load runs twice, first straight to the mock (the baseline), then
# through chatgate; the overhead is the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v jq >/dev/null || { echo "benches/run.sh needs jq (apt-get install jq)"; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --bin chatgate --example mock_upstream --example loadgen
BIN=target/release
WORK=$(mktemp -d)
OUT=$WORK/results
mkdir -p "$OUT"
MOCK_PORT=9100
GW_PORT=8100
LITELLM_PORT=4100
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_mock() { # tokens token_delay_ms
  "$BIN/examples/mock_upstream" --bind 127.0.0.1:$MOCK_PORT --tokens "$1" --token-delay-ms "$2" >"$WORK/mock.log" 2>&1 &
  MOCK_PID=$!; pids+=("$MOCK_PID"); sleep 0.3
}
stop_mock() { kill "$MOCK_PID" 2>/dev/null || true; wait "$MOCK_PID" 2>/dev/null || true; }

gateway_config() { # database url
  cat >"$WORK/bench.toml" <<EOF
[server]
bind = "127.0.0.1:$GW_PORT"
provider_check_secs = 0
[log]
level = "warn"
[database]
url = "$1"
max_connections = 16
[limits]
requests_per_minute = 0
max_concurrent_generations = 0
[generation]
max_unattended = 100000
[ws]
max_frames_per_second = 1000
frame_burst = 1000
[providers.upstream]
kind = "openai"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "bench"
[models.default]
provider = "upstream"
model = "gpt-4o-mini"
input_per_mtok = 0.15
output_per_mtok = 0.60
context_window = 128000
EOF
}

start_gateway() { # database url; sets GW_PID, READY_MS, IDLE_RSS_KB
  gateway_config "$1"
  local started; started=$(date +%s%N)
  "$BIN/chatgate" --config "$WORK/bench.toml" >"$WORK/gateway.log" 2>&1 &
  GW_PID=$!; pids+=("$GW_PID")
  until curl -sf "http://127.0.0.1:$GW_PORT/health" >/dev/null; do
    kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log"; exit 1; }
    sleep 0.005
  done
  READY_MS=$(( ($(date +%s%N) - started) / 1000000 ))
  sleep 0.5
  IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status")
}
stop_gateway() { kill -TERM "$GW_PID" 2>/dev/null || true; wait "$GW_PID" 2>/dev/null || true; }

load() { # name mode streams rounds ramp_ms [extra loadgen args...]
  local name=$1 mode=$2 streams=$3 rounds=$4 ramp=$5; shift 5
  echo "== $name"
  "$BIN/examples/loadgen" --mode "$mode" --target "http://127.0.0.1:$GW_PORT" --streams "$streams" --rounds "$rounds" \
    --ramp-ms "$ramp" --pid "$GW_PID" --label "$name" --json "$OUT/$name.json" "$@"
}

databases=("sqlite|sqlite://$WORK/bench.db")
if [ -n "${CHATGATE_BENCH_POSTGRES_URL:-}" ]; then
  db="chatgate_bench_$$"
  psql "$CHATGATE_BENCH_POSTGRES_URL" -qc "CREATE DATABASE $db"
  pg_url="${CHATGATE_BENCH_POSTGRES_URL%/*}/$db"
  databases+=("postgres|$pg_url")
fi

# 0. What one message costs. Cold: the first message to a fresh gateway (its TTFT overhead, and the RSS after it).
#    Per request: 1-token replies, 20 streams × 50 messages (the request path and persistence, per message).
#    Per delta: 1,000-token replies to one subscriber, 10 messages (the relay, per delta).
cost_databases=("sqlite|sqlite://$WORK/cost.db")
if [ -n "${CHATGATE_BENCH_POSTGRES_URL:-}" ]; then
  psql "$CHATGATE_BENCH_POSTGRES_URL" -qc "CREATE DATABASE ${db}_cost"
  cost_databases+=("postgres|${CHATGATE_BENCH_POSTGRES_URL%/*}/${db}_cost")
fi
for entry in "${cost_databases[@]}"; do
  db_name=${entry%%|*}; db_url=${entry#*|}
  start_mock 40 20
  start_gateway "$db_url"
  load "cold-first-message-$db_name" native 1 1 0 --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
  stop_gateway
  stop_mock
  start_mock 1 0
  start_gateway "$db_url"
  load "cpu-per-request-$db_name" native 20 50 0
  stop_gateway
  stop_mock
done
start_mock 1000 0
start_gateway "sqlite://$WORK/long.db"
load "cpu-per-delta-1000-tokens" native 1 10 0
stop_gateway
stop_mock

# 1. TTFT overhead and inter-token gaps: 100 tokens, 20 ms apart; starts spread over 2 s; 3 messages a stream.
start_mock 100 20
for entry in "${databases[@]}"; do
  db_name=${entry%%|*}; db_url=${entry#*|}
  start_gateway "$db_url"
  echo "$db_name ready_ms=$READY_MS idle_rss_kb=$IDLE_RSS_KB" | tee "$OUT/startup-$db_name.txt"
  for streams in 1 100 1000; do
    load "sse-$db_name-$streams" native "$streams" 3 2000 --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
    load "ws-$db_name-$streams" ws "$streams" 3 2000 --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
  done
  # A burst: 300 new messages at the same instant (their conversations made beforehand).
  load "burst-$db_name-300" native 300 1 0 --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
  stop_gateway
  # Startup on an existing database: migrations already applied, personas already there.
  start_gateway "$db_url"
  echo "$db_name restart on an existing database: ready_ms=$READY_MS idle_rss_kb=$IDLE_RSS_KB" | tee "$OUT/startup-$db_name-restart.txt"
  stop_gateway
done
stop_mock

# 2. Relay capacity: a zero-delay upstream, 200 tokens a reply.
start_mock 200 0
start_gateway "sqlite://$WORK/throughput.db"
load "throughput-sse" native 50 20 0
stop_gateway
stop_mock

# 3. 10,000 concurrent open streams on a slow upstream (20 tokens, 500 ms apart: 10 s a stream). chatgate holds two
#    sockets a stream (the client's and the upstream's): under a hard limit of about 20,000 descriptors the last
#    streams fail to reach the upstream (EMFILE), so the report says what the limit was.
fd_limit=$(ulimit -n)
if [ "$fd_limit" != unlimited ] && [ "$fd_limit" -lt 20100 ]; then
  echo "open-streams-sse-10000 ran with a descriptor limit of $fd_limit (\`ulimit -n\`): chatgate needs two a stream, so streams past about $(( (fd_limit - 100) / 2 )) fail to reach the upstream" \
    | tee "$OUT/notes-fd-limit.txt"
fi
start_mock 20 500
start_gateway "sqlite://$WORK/many.db"
load "open-streams-sse-10000" native 10000 1 5000
stop_gateway
stop_mock

# 4. PostgreSQL slowed: every usage insert and every reply-row update sleeps 200 ms. Tokens and new requests must
#    not notice (background writes have their own connection pool); every reply must still be saved.
if [ -n "${CHATGATE_BENCH_POSTGRES_URL:-}" ]; then
  start_mock 100 20
  start_gateway "$pg_url"
  psql "$pg_url" -q <<'SQL'
CREATE OR REPLACE FUNCTION bench_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$;
CREATE TRIGGER bench_slow_usage BEFORE INSERT ON usage_records FOR EACH ROW EXECUTE FUNCTION bench_slow();
CREATE TRIGGER bench_slow_reply BEFORE UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION bench_slow();
SQL
  load "sse-postgres-slowdb-100" native 100 3 2000 --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
  stop_gateway
  stop_mock
  echo "slowed PostgreSQL: replies saved by status: $(psql "$pg_url" -tAc "SELECT string_agg(status || '=' || n, ' ') FROM (SELECT status, count(*) n FROM messages WHERE role = 'assistant' GROUP BY status) s")" \
    | tee "$OUT/notes-slowdb.txt"
fi

# 5. The peer beside us: chatgate's OpenAI-compatible endpoint and LiteLLM proxy (its defaults, from a venv made
#    here: `pip install 'litellm[proxy]'`, the offline cost map, a master key) in front of the same mock, with the
#    same load: 40 tokens 20 ms apart, starts spread over 1 s, 3 messages a stream.
LITELLM_VENV=${CHATGATE_BENCH_LITELLM_VENV:-$HOME/.cache/chatgate-bench/litellm-venv}
if [ ! -x "$LITELLM_VENV/bin/litellm" ]; then
  echo "== making the LiteLLM venv in $LITELLM_VENV"
  { python3 -m venv "$LITELLM_VENV" && "$LITELLM_VENV/bin/pip" install -q 'litellm[proxy]'; } >"$WORK/litellm-install.log" 2>&1 || true
fi
start_mock 40 20
start_gateway "sqlite://$WORK/peer.db"
for streams in 10 50 200; do
  echo "== openai-chatgate-$streams"
  "$BIN/examples/loadgen" --mode openai --target "http://127.0.0.1:$GW_PORT/v1" --model default \
    --streams "$streams" --rounds 3 --ramp-ms 1000 --pid "$GW_PID" --label "openai-chatgate-$streams" \
    --json "$OUT/openai-chatgate-$streams.json" --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
done
stop_gateway
if [ -x "$LITELLM_VENV/bin/litellm" ]; then
  cat >"$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: default
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:$MOCK_PORT/v1
      api_key: bench
general_settings:
  master_key: sk-bench
YAML
  LITELLM_LOCAL_MODEL_COST_MAP=True "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 \
    --port "$LITELLM_PORT" >"$WORK/litellm.log" 2>&1 &
  LITELLM_PID=$!; pids+=("$LITELLM_PID")
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$LITELLM_PORT/health/liveliness" >/dev/null && break
    kill -0 "$LITELLM_PID" 2>/dev/null || break
    sleep 0.2
  done
  if curl -sf "http://127.0.0.1:$LITELLM_PORT/health/liveliness" >/dev/null; then
    echo "LiteLLM proxy $("$LITELLM_VENV/bin/pip" show litellm | awk '/^Version/ {print $2}') (its defaults: one worker)" \
      >"$OUT/notes-litellm.txt"
    # The proxy and any worker processes it started, summed.
    litellm_pids=$(echo "$LITELLM_PID" $(pgrep -P "$LITELLM_PID" || true) | tr ' ' ',')
    for streams in 10 50 200; do
      echo "== openai-litellm-$streams"
      "$BIN/examples/loadgen" --mode openai --target "http://127.0.0.1:$LITELLM_PORT/v1" --api-key sk-bench \
        --model default --streams "$streams" --rounds 3 --ramp-ms 1000 --pid "$litellm_pids" \
        --label "openai-litellm-$streams" --json "$OUT/openai-litellm-$streams.json" \
        --compare-direct "http://127.0.0.1:$MOCK_PORT/v1"
    done
  else
    echo "LiteLLM proxy did not start, so its rows are skipped: $(tail -1 "$WORK/litellm.log")" | tee "$OUT/notes-litellm.txt"
  fi
  kill "$LITELLM_PID" 2>/dev/null || true
  wait "$LITELLM_PID" 2>/dev/null || true
else
  echo "The LiteLLM venv could not be made in $LITELLM_VENV, so its rows are skipped: $(tail -1 "$WORK/litellm-install.log")" \
    | tee "$OUT/notes-litellm.txt"
fi
stop_mock

if [ -n "${CHATGATE_BENCH_POSTGRES_URL:-}" ]; then
  for name in "$db" "${db}_cost"; do psql "$CHATGATE_BENCH_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $name WITH (FORCE)" || true; done
fi

# The report.
row() { # file
  jq -r '[.label, .target.streams,
          (.target.ttft_ms.p50|tostring), (.target.ttft_ms.p99|tostring),
          (if .overhead_ms then (.overhead_ms.ttft_p50*100|round/100|tostring) else "–" end),
          (if .overhead_ms then (.overhead_ms.ttft_p99*100|round/100|tostring) else "–" end),
          (.target.gap_ms.p50|tostring), (.target.gap_ms.p99|tostring),
          (.target.deltas_per_sec|round|tostring), (.target.errors|tostring),
          ((.target.rss_peak_mb // 0)*10|round/10|tostring),
          ((.target.rss_growth_kb_per_stream // 0)*10|round/10|tostring),
          ((.target.rss_end_mb // 0)*10|round/10|tostring),
          ((.target.cpu_secs // 0)*100|round/100|tostring),
          ((.target.cpu_us_per_delta // 0)*10|round/10|tostring),
          ((.target.cpu_us_per_request // 0)|round|tostring)] | "| " + join(" | ") + " |"' "$1"
}
{
  echo "# chatgate benchmarks"
  echo
  echo "Generated by \`benches/run.sh\` on $(date -u +%Y-%m-%d). Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem/ {print $2}') GiB;"
  echo "the mock upstream, chatgate and the load generator all run on it. Reproduce: \`benches/run.sh\` (add"
  echo "\`CHATGATE_BENCH_POSTGRES_URL\` for PostgreSQL)."
  echo
  echo "TTFT is measured by the client, from sending the request to the first delta; the overhead is chatgate's"
  echo "TTFT minus the same load's TTFT straight to the mock (OpenAI format), percentile by percentile. Through"
  echo "chatgate the request also authenticates, loads the conversation and history, commits the user message,"
  echo "and starts the generation before the upstream is called."
  echo
  echo "CPU columns are chatgate's CPU time over the run (from \`/proc/<pid>/stat\`), divided by the deltas it"
  echo "relayed and by the messages it answered: all-in, so a row of short replies is mostly request cost and a row"
  echo "of long replies mostly relay cost. RSS end is chatgate's resident set when the load ended."
  echo
  echo "| run | streams | TTFT p50 ms | TTFT p99 ms | overhead p50 ms | overhead p99 ms | gap p50 ms | gap p99 ms | deltas/s | errors | RSS peak MB | RSS growth KB/stream | RSS end MB | CPU s | CPU µs/delta | CPU µs/request |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for f in "$OUT"/*.json; do row "$f"; done
  echo
  echo "chatgate's OpenAI-compatible endpoint and LiteLLM proxy side by side (same mock: 40 tokens 20 ms apart;"
  echo "starts over 1 s; 3 messages a stream; overheads against the same load straight to the mock):"
  echo
  echo "| streams | gateway | TTFT overhead p50 ms | TTFT overhead p99 ms | gap p99 ms | CPU µs/delta | RSS peak MB | errors |"
  echo "|---|---|---|---|---|---|---|---|"
  for streams in 10 50 200; do
    for gateway in chatgate litellm; do
      f="$OUT/openai-$gateway-$streams.json"
      [ -e "$f" ] || continue
      jq -r --arg g "$gateway" '[(.target.streams|tostring), $g,
          (.overhead_ms.ttft_p50*100|round/100|tostring), (.overhead_ms.ttft_p99*100|round/100|tostring),
          (.target.gap_ms.p99|tostring), ((.target.cpu_us_per_delta // 0)*10|round/10|tostring),
          ((.target.rss_peak_mb // 0)*10|round/10|tostring), (.target.errors|tostring)] | "| " + join(" | ") + " |"' "$f"
    done
  done
  echo
  echo "Startup (time until \`/health\` answers, on an existing database) and idle RSS:"
  echo
  for f in "$OUT"/startup-*.txt; do echo "- $(cat "$f")"; done
  for f in "$OUT"/notes-*.txt; do [ -e "$f" ] && { echo; echo "$(cat "$f")"; }; done
} > docs/benchmarks-results.md
echo "wrote docs/benchmarks-results.md"
