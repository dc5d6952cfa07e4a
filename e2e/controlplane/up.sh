#!/usr/bin/env bash
# Starts a local control plane for tests and demos: etcd + kube-apiserver on 127.0.0.1, TLS with a fresh CA,
# a static token file (admin in system:masters, dev with no RBAC), RBAC authorization, service-account
# signing keys (the TokenRequest API works). Waits for /readyz and writes WORKDIR/kubeconfig with the
# contexts `admin` and `dev`. TEST HARNESS: there is no scheduler, controller-manager or kubelet.
#
#   up.sh [--foreground] [--node] [WORKDIR]       (WORKDIR defaults to $W, else a new /tmp/cp.XXXXXX)
#
# --node: also a real node (node.sh): kube-controller-manager, kube-scheduler, containerd, the kubelet and
# kube-proxy, pods on a CNI bridge; the API server then listens on the bridge's address (10.244.0.1), so
# pods reach it through the `kubernetes` Service. Needs root and NODE_IMAGES (the archives of
# e2e/images/build.sh).
#
# Default: the servers keep running after up.sh exits; stop them with `down.sh WORKDIR`.
# --foreground: up.sh stays in the foreground and stops both servers on SIGTERM/SIGINT or when it exits;
# the servers also die with it if it is killed (setpriv --pdeathsig). The Rust harness uses this mode.
# SIGUSR1 to it (pid in WORKDIR/up.pid) restarts kube-apiserver (SIGTERM, then the same command line,
# until /readyz) and appends a line to WORKDIR/apiserver.restarts; the chaos run uses it.
#
# Env: ETCD_PORT, ETCD_PEER_PORT, APISERVER_PORT (default: free ports), BIN (default: ./bin),
# EXTRA_TOKENS_CSV (a file of extra `token,user,uid,"group1,group2"` lines for the static token file).
# Output: the last line on stdout is `KUBECONFIG=<path>`; WORKDIR/controlplane.env has the ports, URL and
# tokens; logs are WORKDIR/etcd.log and WORKDIR/apiserver.log.
set -euo pipefail
start_ns=$(date +%s%N)
CP=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$CP/bin}

foreground= node=
while [ $# -gt 0 ]; do
  case "$1" in
    --foreground) foreground=1; shift ;;
    --node) node=1; shift ;;
    *) break ;;
  esac
done
W=${1:-${W:-}}
[ -n "$W" ] || W=$(mktemp -d /tmp/cp.XXXXXX)
mkdir -p "$W"
W=$(cd "$W" && pwd)

die() { echo "up.sh: $*" >&2; exit 1; }
for b in etcd kube-apiserver; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run \`make controlplane\` first (builds it from Go modules)"
done
for tool in openssl curl; do command -v "$tool" >/dev/null || die "'$tool' not found: run \`make deps\`"; done
if [ -e "$W/etcd.pid" ] && kill -0 "$(cat "$W/etcd.pid")" 2>/dev/null; then
  die "a control plane already runs in $W (stop it with down.sh $W)"
fi

# The node's teardown (pods, bridge, chains) runs in up.sh's trap; down.sh knows only pids.
[ -z "$node" ] || [ -n "$foreground" ] || die "--node needs --foreground (stop it with SIGTERM or Ctrl-C)"
if [ -n "$node" ]; then
  # shellcheck source=node.sh
  source "$CP/node.sh"
  node_prepare
  LISTEN_IP=$NODE_IP
else
  LISTEN_IP=127.0.0.1
fi

# Ports the kernel hands out for an ephemeral bind are free right now; the servers bind them moments later.
# One python run for all three (a pyenv shim costs a few hundred ms per start).
free_ports() {
  local py
  py=$(command -v /usr/bin/python3 || command -v python3) || die "python3 not found: run \`make deps\`"
  "$py" -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}
read -r p1 p2 p3 < <(free_ports)
ETCD_PORT=${ETCD_PORT:-$p1}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-$p2}
APISERVER_PORT=${APISERVER_PORT:-$p3}

# --- certificates, keys and tokens ---------------------------------------------------------------------
cd "$W"
rm -rf etcd pki controlplane.env
# EC P-256 keys: generated in milliseconds where RSA takes about a second on a busy 2-core machine.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=e2e-ca -keyout ca.key -out ca.crt \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
printf 'subjectAltName=IP:%s,IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$LISTEN_IP" > san.ext
openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile san.ext \
  -out apiserver.crt 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out sa.key 2>/dev/null  # tokens are signed ES256
openssl ec -in sa.key -pubout -out sa.pub 2>/dev/null
ADMIN_TOKEN=$(openssl rand -hex 24)
DEV_TOKEN=$(openssl rand -hex 24)
{
  printf '%s,e2e-admin,uid-e2e-admin,"system:masters"\n' "$ADMIN_TOKEN"
  printf '%s,e2e-dev,uid-e2e-dev,"e2e-devs"\n' "$DEV_TOKEN"
  if [ -n "${EXTRA_TOKENS_CSV:-}" ]; then cat "$EXTRA_TOKENS_CSV"; fi
  if [ -n "$node" ]; then cat "$W/node-tokens.csv"; fi
} > tokens.csv
chmod 600 ./*.key tokens.csv

# --- servers -------------------------------------------------------------------------------------------
pids=()
stop_servers() { # the API server first: it would wait for an etcd that is already gone
  local i p
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    p=${pids[$i]}
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  [ -n "$node" ] && node_stop
  rm -f "$W"/*.pid "$W/controlplane.env"
}
launch() { # launch NAME LOG CMD...: background process, pid in $W/NAME.pid
  local name=$1 log=$2; shift 2
  if [ -n "$foreground" ]; then
    setpriv --pdeathsig KILL -- "$@" >"$log" 2>&1 &
  else
    setsid "$@" >"$log" 2>&1 < /dev/null &
  fi
  echo $! > "$W/$name.pid"
  pids+=("$!")
}
if [ -n "$foreground" ]; then trap 'stop_servers; exit 0' TERM INT; trap stop_servers EXIT; fi
fail() {
  echo "up.sh: $1; last lines of $2:" >&2
  tail -n 40 "$2" >&2 || true
  stop_servers
  exit 1
}

launch etcd "$W/etcd.log" "$BIN/etcd" --name=e2e --data-dir="$W/etcd" --log-level=warn \
  --unsafe-no-fsync=true \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster="e2e=http://127.0.0.1:$ETCD_PEER_PORT"
ok=
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$ETCD_PORT/health" >/dev/null 2>&1 && { ok=1; break; }
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.1
done
[ -n "$ok" ] || fail "etcd did not become healthy on 127.0.0.1:$ETCD_PORT" "$W/etcd.log"

# Without a node, ServiceAccount admission is off: without controller-manager no namespace gets a
# `default` SA, and the plugin would reject every Pod. Service accounts created by hand still authenticate
# (TokenRequest). With one, the kubelet's requests go through the Node authorizer, as in any cluster.
if [ -n "$node" ]; then
  mode_flags=(--authorization-mode=Node,RBAC)
else
  mode_flags=(--authorization-mode=RBAC --disable-admission-plugins=ServiceAccount)
fi
apiserver_cmd=("$BIN/kube-apiserver" \
  --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address="$LISTEN_IP" --advertise-address="$LISTEN_IP" --secure-port="$APISERVER_PORT" \
  --cert-dir="$W/pki" --tls-cert-file="$W/apiserver.crt" --tls-private-key-file="$W/apiserver.key" \
  --token-auth-file="$W/tokens.csv" "${mode_flags[@]}" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$W/sa.pub" --service-account-signing-key-file="$W/sa.key" \
  --service-cluster-ip-range=10.0.0.0/24 \
  --allow-privileged=true --profiling=false)
launch apiserver "$W/apiserver.log" "${apiserver_cmd[@]}"

apiserver_ready() { # until /readyz answers (60 s) or the API server (pids[1]) exits
  local _
  for _ in $(seq 600); do
    if curl -fsS --cacert "$W/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
         "https://$LISTEN_IP:$APISERVER_PORT/readyz" >/dev/null 2>&1; then return 0; fi
    kill -0 "${pids[1]}" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
apiserver_ready || fail "kube-apiserver did not become ready on $LISTEN_IP:$APISERVER_PORT" "$W/apiserver.log"
API_URL="https://$LISTEN_IP:$APISERVER_PORT"
node_env=
if [ -n "$node" ]; then
  node_start
  node_env="NODE_NAME=$NODE_NAME
NODE_IP=$NODE_IP
POD_CIDR=$POD_CIDR
CONTAINERD_SOCK=$W/containerd/containerd.sock"
fi
ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))

cat > "$W/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$API_URL", certificate-authority: "$W/ca.crt"}
users:
- name: admin
  user: {token: "$ADMIN_TOKEN"}
- name: dev
  user: {token: "$DEV_TOKEN"}
contexts:
- name: admin
  context: {cluster: e2e, user: admin}
- name: dev
  context: {cluster: e2e, user: dev}
current-context: admin
KC
chmod 600 "$W/kubeconfig"
# Written last and renamed into place: its presence means "ready" to the Rust harness.
cat > "$W/controlplane.env.tmp" <<ENV
API_URL=$API_URL
APISERVER_PORT=$APISERVER_PORT
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
CA_FILE=$W/ca.crt
ADMIN_TOKEN=$ADMIN_TOKEN
DEV_TOKEN=$DEV_TOKEN
KUBECONFIG=$W/kubeconfig
$node_env
ENV
mv "$W/controlplane.env.tmp" "$W/controlplane.env"
echo "up.sh: kube-apiserver${node:+ and node $NODE_NAME} ready at $API_URL in ${ready_ms} ms (etcd 127.0.0.1:$ETCD_PORT; logs in $W)" >&2
echo "KUBECONFIG=$W/kubeconfig"

if [ -n "$foreground" ]; then
  echo $$ > "$W/up.pid"
  restart=
  restart_apiserver() {
    local t0 old=${pids[1]}
    t0=$(date +%s%N)
    kill -TERM "$old" 2>/dev/null || true
    wait "$old" 2>/dev/null || true
    setpriv --pdeathsig KILL -- "${apiserver_cmd[@]}" >>"$W/apiserver.log" 2>&1 &
    pids[1]=$!
    echo "${pids[1]}" > "$W/apiserver.pid"
    apiserver_ready || fail "kube-apiserver did not come back after a restart" "$W/apiserver.log"
    echo "restarted in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >> "$W/apiserver.restarts"
  }
  trap 'restart=1' USR1
  # Stay until told to stop (trap above) or until a server dies; SIGUSR1 interrupts the wait.
  while true; do
    wait -n "${pids[@]}" || true
    if [ -n "$restart" ]; then restart=; restart_apiserver; continue; fi
    break
  done
  echo "up.sh: a control-plane process exited; stopping the other (see $W/*.log)" >&2
  exit 1
fi
