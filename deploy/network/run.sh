#!/usr/bin/env bash
# A small hospital network on one machine, each role a process of its own
# started from its own TOML file, as docs/operations.md ("Each role on its
# own machine") sets them up on separate machines: a CA, the chain (the
# embedded chain over mutual TLS, or anvil), SERVERS servers on one
# PostgreSQL database (over TLS if its URL says so) with their blobs in a
# directory or an S3 bucket, and COLLECTORS collectors, each serving one
# ward with one patient and DEVICES pulse oximeters, forwarding to every
# server in turn.
#
#   deploy/network/run.sh DIR
#
# The first run sets DIR up (certificates, contracts, registrations,
# configuration files), later runs start the same network again. It stays
# in the foreground until Ctrl-C or SIGTERM, which stop every role. What
# it started, and where, is in DIR/network.env once every role is ready;
# each role's output is in DIR/log/ROLE.log, its process id in
# DIR/run/ROLE.pid. Then, for example:
#
#   medledger sim --devices-dir DIR/devices/ward-1 --collector 127.0.0.1:PORT \
#     --collector-name localhost --ca-root DIR/ca/root.crt
#
# Settings, from the environment (first run; later runs reuse DIR's):
#   DATABASE     the servers' PostgreSQL URL (required), e.g.
#                postgres://medledger@localhost:5432/medledger?sslmode=verify-full&sslrootcert=/etc/medledger/db-ca.crt
#   BLOBS        where blobs go: file:///ABSOLUTE/PATH (default DIR/blobs)
#                or s3://BUCKET/PREFIX with the AWS_* variables set
#                (docs/operations.md, The blob store)
#   CHAIN        embedded (default) or anvil: an external Ethereum node
#   MEDLEDGER    the medledger binary (default: medledger on PATH)
#   ANVIL, CAST  anvil's and cast's binaries (default: on PATH)
#   SERVERS, COLLECTORS, DEVICES   3, 3, 3
#   LEASE_MS     how long a dead server's patients wait (default 10000)
#   BASE_PORT    ports BASE_PORT.. on 127.0.0.1 (default 19400)
#   SETUP_ONLY   if set, set DIR up and stop there, to edit a role's file
#                (e.g. a collector's [limits]) before the first start
set -euo pipefail

die() { echo "run.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: $0 DIR (see the comment at its top)"
mkdir -p "$1"
dir=$(cd "$1" && pwd)
env_file=$dir/network.env
settings=$dir/settings.env
ml=${MEDLEDGER:-medledger}
command -v "$ml" >/dev/null || die "no medledger binary: put it on PATH or set MEDLEDGER"
mkdir -p "$dir/log" "$dir/run"
rm -f "$env_file"

if [ -f "$settings" ]; then
  # shellcheck source=/dev/null
  . "$settings"
else
  [ -n "${DATABASE:-}" ] || die "set DATABASE to the servers' PostgreSQL URL"
  cat > "$settings" <<EOF
DATABASE='${DATABASE}'
BLOBS='${BLOBS:-file://$dir/blobs}'
CHAIN='${CHAIN:-embedded}'
SERVERS=${SERVERS:-3}
COLLECTORS=${COLLECTORS:-3}
DEVICES=${DEVICES:-3}
LEASE_MS=${LEASE_MS:-10000}
BASE_PORT=${BASE_PORT:-19400}
EOF
  # shellcheck source=/dev/null
  . "$settings"
fi
case $CHAIN in embedded | anvil) ;; *) die "CHAIN is embedded or anvil, not $CHAIN" ;; esac

# Ports: the chain's plain JSON-RPC (loopback) and mutual-TLS listener,
# then each server's, each server's metrics, each collector's and each
# collector's metrics.
rpc_port=$BASE_PORT
rpc_tls_port=$((BASE_PORT + 1))
server_port() { echo $((BASE_PORT + 10 + $1)); }
server_metrics() { echo $((BASE_PORT + 30 + $1)); }
collector_port() { echo $((BASE_PORT + 50 + $1)); }
collector_metrics() { echo $((BASE_PORT + 70 + $1)); }

# The processes started, stopped (SIGTERM) in reverse order at exit.
pids=()
stop_all() {
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start NAME PORT COMMAND...: runs COMMAND in the background, its output in
# DIR/log/NAME.log, and waits until it listens on PORT.
start() {
  local name=$1 port=$2
  shift 2
  ! listening "$port" || die "127.0.0.1:$port is taken (set BASE_PORT)"
  "$@" >>"$dir/log/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  echo "$pid" > "$dir/run/$name.pid"
  for _ in $(seq 1 600); do
    listening "$port" && { echo "started $name (pid $pid) on 127.0.0.1:$port"; return; }
    kill -0 "$pid" 2>/dev/null || die "$name exited instead of starting: see $dir/log/$name.log"
    sleep 0.1
  done
  die "$name did not listen on 127.0.0.1:$port within 60 s: see $dir/log/$name.log"
}

# ready NAME PORT: waits until the role's /readyz on PORT answers 200.
ready() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$2/readyz" 2>/dev/null && return
    sleep 0.1
  done
  die "$1 is not ready (http://127.0.0.1:$2/readyz): see $dir/log/$1.log"
}

address_of() { "$ml" ca show --json "$1" | sed -n 's/.*"address": *"\(0x[0-9a-fA-F]*\)".*/\1/p'; }

chain_url() {
  case $CHAIN in
    embedded) echo "https://localhost:$rpc_tls_port" ;;
    anvil) echo "http://127.0.0.1:$rpc_port" ;;
  esac
}

start_chain() {
  case $CHAIN in
    embedded)
      start chain "$rpc_tls_port" "$ml" chain --data "$dir/chain" \
        --rpc "127.0.0.1:$rpc_port" --rpc-tls "127.0.0.1:$rpc_tls_port" \
        --tls-cert "$dir/chain-node" --tls-root "$dir/ca/root.crt" --tls-crl "$dir/ca/crl.pem" "$@"
      ;;
    anvil)
      start chain "$rpc_port" "${ANVIL:-anvil}" --host 127.0.0.1 --port "$rpc_port" \
        --state "$dir/anvil-state.json"
      ;;
  esac
}

stop_chain() {
  local pid
  pid=$(cat "$dir/run/chain.pid")
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  pids=()
}

# The admin's commands, over the chain as every role reaches it.
admin() {
  MEDLEDGER_RPC=$(chain_url) MEDLEDGER_KEY=$dir/admin1.eth.key MEDLEDGER_CA_ROOT=$dir/ca/root.crt \
    "$ml" admin "$@"
}

set_up() {
  echo "setting up $dir ($CHAIN chain, $SERVERS servers, $COLLECTORS collectors)"
  # 2. The CA and every certificate.
  "$ml" ca init --dir "$dir/ca" --org "Example Hospital Network" >/dev/null
  local issue=("$ml" ca issue --ca "$dir/ca")
  "${issue[@]}" --role admin --out "$dir/admin1" >/dev/null
  "${issue[@]}" --role server --out "$dir/chain-node" --san localhost --san 127.0.0.1 >/dev/null
  local i
  for i in $(seq 1 "$SERVERS"); do
    "${issue[@]}" --role server --out "$dir/server-$i/server" --san localhost --san 127.0.0.1 >/dev/null
  done
  for i in $(seq 1 "$COLLECTORS"); do
    "${issue[@]}" --role collector --out "$dir/collector-$i/collector" --location "ward-$i/1/A" \
      --san localhost --san 127.0.0.1 >/dev/null
    "${issue[@]}" --role patient --out "$dir/collector-$i/cards/patient-$i" >/dev/null
    "${issue[@]}" --role device --count "$DEVICES" --epc "urn:epc:tag:sgtin-96:3.0614141.812345.${i}000" \
      --group pulse-oximeter --rule default --out "$dir/devices/ward-$i" >/dev/null
  done

  # 3-4. The chain, and the contracts deployed by the admin.
  local admin_account
  admin_account=$(address_of "$dir/admin1.crt")
  case $CHAIN in
    embedded) start_chain --allow "$admin_account" ;;
    anvil)
      start_chain
      # anvil's accounts need ether to send: the admin and the servers.
      local who
      for who in "$dir/admin1" $(seq -f "$dir/server-%g/server" 1 "$SERVERS"); do
        "${CAST:-cast}" rpc --rpc-url "$(chain_url)" anvil_setBalance "$(address_of "$who.crt")" \
          0x56BC75E2D63100000 >/dev/null
      done
      ;;
  esac
  local registry
  registry=$(admin deploy | sed -n 's/.*export MEDLEDGER_REGISTRY=//p')
  [ -n "$registry" ] || die "admin deploy printed no Registry address"
  echo "REGISTRY=$registry" >> "$settings"
  if [ "$CHAIN" = embedded ]; then
    # The embedded chain lets the Registry's accounts send once it knows it.
    stop_chain
    start_chain --registry "$registry"
  fi
  REGISTRY=$registry
  export MEDLEDGER_REGISTRY=$registry
  for i in $(seq 1 "$SERVERS"); do
    admin node register --cert "$dir/server-$i/server.crt" --kind server >/dev/null
  done
  admin rule allow --group pulse-oximeter --types heart-rate,spo2 >/dev/null

  # 8. Each ward: its collector, its patient (admitted under a patientRef
  # from the hospital's salt) and the patient's devices.
  (umask 077 && openssl rand -hex 32 > "$dir/patient.salt")
  for i in $(seq 1 "$COLLECTORS"); do
    admin node register --cert "$dir/collector-$i/collector.crt" --kind collector >/dev/null
    local patient
    patient=$("$ml" patient ref --salt-file "$dir/patient.salt" --id "MRN-$i")
    echo "PATIENT_$i=$patient" >> "$settings"
    admin patient admit --patient "$patient" --account "$(address_of "$dir/collector-$i/cards/patient-$i.crt")" \
      --department "ward-$i" --floor 1 --room A --bed 1 >/dev/null
    local serial
    for serial in $(seq "${i}000" $((i * 1000 + DEVICES - 1))); do
      admin device register --cert "$dir/devices/ward-$i/device-$serial.crt" >/dev/null
      admin device assign --epc "urn:epc:tag:sgtin-96:3.0614141.812345.$serial" --patient "$patient" >/dev/null
    done
  done

  # 6. The servers' shared secrets: the KEK (the ledger key is made by
  # the first server at its first start).
  (umask 077 && openssl rand -hex 32 > "$dir/kek.hex")
  for i in $(seq 1 "$SERVERS"); do write_server "$i"; done
  for i in $(seq 1 "$COLLECTORS"); do write_collector "$i"; done
  stop_chain
}

# The files of the roles, with every path absolute.
write_server() {
  cat > "$dir/server-$1/server.toml" <<EOF
listen = "127.0.0.1:$(server_port "$1")"
metrics_listen = "127.0.0.1:$(server_metrics "$1")"
data = "$dir/server-$1/data"
database = "$DATABASE"
blobs = "$BLOBS"
credentials = "$dir/server-$1/server"
ca_root = "$dir/ca/root.crt"
crl = "$dir/ca/crl.pem"
kek_file = "$dir/kek.hex"
ledger_key = "$dir/ledger.key"
ledger_key_name = "medledger-network"
chain_rpc = "$(chain_url)"
registry = "$REGISTRY"
server_name = "localhost"
lease_ms = $LEASE_MS
EOF
}

write_collector() {
  local failover="" k n
  # Each collector forwards first to its own server, then to the others.
  for ((k = 1; k < SERVERS; k++)); do
    n=$(((($1 - 1 + k) % SERVERS) + 1))
    failover+="${failover:+, }{ server = \"127.0.0.1:$(server_port "$n")\", server_name = \"localhost\" }"
  done
  cat > "$dir/collector-$1/collector.toml" <<EOF
listen = "127.0.0.1:$(collector_port "$1")"
metrics_listen = "127.0.0.1:$(collector_metrics "$1")"
data = "$dir/collector-$1/data"
credentials = "$dir/collector-$1/collector"
ca_root = "$dir/ca/root.crt"
crl = "$dir/ca/crl.pem"
cards = "$dir/collector-$1/cards"
chain_rpc = "$(chain_url)"
registry = "$REGISTRY"
server = "127.0.0.1:$(server_port $(((($1 - 1) % SERVERS) + 1)))"
server_name = "localhost"
failover = [$failover]
EOF
}

[ -f "$dir/setup.done" ] || { set_up; touch "$dir/setup.done"; . "$settings"; }
if [ -n "${SETUP_ONLY:-}" ]; then
  echo "set up $dir: edit its files if need be, then run $0 $dir to start the network"
  exit 0
fi

case $CHAIN in
  embedded) start_chain --registry "$REGISTRY" ;;
  anvil) start_chain ;;
esac
for i in $(seq 1 "$SERVERS"); do
  start "server-$i" "$(server_port "$i")" "$ml" server --config "$dir/server-$i/server.toml"
done
for i in $(seq 1 "$COLLECTORS"); do
  start "collector-$i" "$(collector_port "$i")" "$ml" collector --config "$dir/collector-$i/collector.toml"
done
for i in $(seq 1 "$SERVERS"); do ready "server-$i" "$(server_metrics "$i")"; done
for i in $(seq 1 "$COLLECTORS"); do ready "collector-$i" "$(collector_metrics "$i")"; done

{
  echo "CHAIN_RPC=$(chain_url)"
  echo "REGISTRY=$REGISTRY"
  # The servers' one ledger key, to check whose signatures a ledger bears.
  echo "LEDGER_KEY=$(sed -n 's/^  ledger key *//p' "$dir/log/server-1.log" | tail -1)"
  echo "SERVERS=$SERVERS"
  echo "COLLECTORS=$COLLECTORS"
  for i in $(seq 1 "$SERVERS"); do echo "SERVER_$i=127.0.0.1:$(server_port "$i")"; done
  for i in $(seq 1 "$COLLECTORS"); do
    echo "COLLECTOR_$i=127.0.0.1:$(collector_port "$i")"
    echo "PATIENT_$i=$(eval echo "\$PATIENT_$i")"
  done
} > "$env_file.tmp"
mv "$env_file.tmp" "$env_file"
echo "the network is up: $env_file; Ctrl-C stops it"
wait
