# Sourced by up.sh --node: one real Kubernetes node on this machine, beside the control plane.
# kube-controller-manager, kube-scheduler, containerd (Debian's, CRI plugin, cgroupfs, overlayfs), the
# kubelet and kube-proxy (iptables); pods on a CNI bridge (bridge + host-local + portmap from
# containernetworking-plugins) that nothing outside this machine routes to. Every piece of state lives
# under $W, except what the kernel keeps machine-wide: the bridge $NODE_BRIDGE, kube-proxy's iptables
# chains and the cgroups under /$NODE_CGROUP_ROOT; node_stop removes those, and the next start removes
# whatever a killed run left (the last work directory is recorded in $NODE_RUN_DIR).
#
# One node cluster per machine at a time: they would share the bridge and the chains ($NODE_RUN_DIR/lock).

NODE_NAME=e2e-node
NODE_BRIDGE=erbr0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
NODE_CGROUP_ROOT=e2e-node
NODE_RUN_DIR=/run/embedding-rollout-e2e
# The images a node needs before any pod: the sandbox and the two the product ships.
NODE_IMAGES=${NODE_IMAGES:-}
node_pids=()

node_check() {
  [ "$(id -u)" = 0 ] || die "--node needs root (containerd, the kubelet and iptables)"
  local b
  for b in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [ -x "$BIN/$b" ] || die "$BIN/$b is missing: run \`make controlplane\` first (builds it from Go modules)"
  done
  for b in containerd containerd-shim-runc-v2 runc ctr iptables ip; do
    command -v "$b" >/dev/null || die "'$b' not found: run \`make deps\` (Debian containerd, runc, iptables, iproute2)"
  done
  for b in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$b" ] || die "CNI plugin /usr/lib/cni/$b not found: run \`make deps\` (containernetworking-plugins)"
  done
  [ -n "$NODE_IMAGES" ] && [ -f "$NODE_IMAGES/pause.tar" ] \
    || die "no image archives in '${NODE_IMAGES:-<NODE_IMAGES unset>}': run e2e/images/build.sh (make e2e does)"
}

# Kills what a previous run left: pods' processes in the node's cgroups, its shims, mounts, the bridge,
# kube-proxy's chains. Safe to run when nothing is left.
node_cleanup() {
  local old=${1:-} d pids
  for d in /sys/fs/cgroup/*/"$NODE_CGROUP_ROOT"; do
    [ -d "$d" ] || continue
    pids=$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  done
  if [ -n "$old" ]; then
    pkill -KILL -f "containerd-shim-runc-v2 .*-address $old/containerd/containerd.sock" || true
    pkill -KILL -f "containerd --config $old/containerd/config.toml" || true
    # Deepest first; lazy, so a mount still busy for a moment does not stop the rest.
    findmnt -rn -o TARGET | { grep -F "$old/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  fi
  for d in /sys/fs/cgroup/*/"$NODE_CGROUP_ROOT"; do
    [ ! -d "$d" ] || find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  [ ! -x "$BIN/kube-proxy" ] || "$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # The kubelet's own chains (kube-proxy --cleanup leaves them): KUBE-FIREWALL, hooked into INPUT and
  # OUTPUT, and the KUBE-KUBELET-CANARY chains it watches to notice a flushed table.
  local ipt table chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    while "$ipt" -D INPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    while "$ipt" -D OUTPUT -j KUBE-FIREWALL 2>/dev/null; do :; done
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY; do
        { "$ipt" -t "$table" -F "$chain" && "$ipt" -t "$table" -X "$chain"; } 2>/dev/null || true
      done
    done
  done
  ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || ip link del "$NODE_BRIDGE"
}

# Before the certificates: the bridge carries the node's address, which the API server binds and signs.
node_prepare() {
  node_check
  mkdir -p "$NODE_RUN_DIR"
  exec 9>"$NODE_RUN_DIR/lock"
  # A node still tearing down (its test binary just exited) holds the lock for a few seconds.
  flock -w 120 9 || die "another node cluster runs on this machine (lock $NODE_RUN_DIR/lock held for 120 s)"
  node_cleanup "$(cat "$NODE_RUN_DIR/workdir" 2>/dev/null)"
  node_cleanup "$W"
  echo "$W" > "$NODE_RUN_DIR/workdir"
  rm -rf "$W/containerd" "$W/kubelet" "$W/cni" "$W/pod-logs"

  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Pod -> Service -> pod on the same bridge is routed through the host (kube-proxy's DNAT), and bridged
  # frames must pass iptables for the replies to be un-NATed.
  sysctl -qw net.ipv4.ip_forward=1
  [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -qw net.bridge.bridge-nf-call-iptables=1
  # The kubelet puts pods under this cgroup in every hierarchy; it must exist, and a v1 cpuset child
  # starts with no CPUs or memory nodes until given its parent's.
  local d
  for d in /sys/fs/cgroup/*/; do
    case "$d" in */unified/) continue ;; esac
    mkdir -p "$d$NODE_CGROUP_ROOT"
  done
  cat /sys/fs/cgroup/cpuset/cpuset.cpus > "/sys/fs/cgroup/cpuset/$NODE_CGROUP_ROOT/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems > "/sys/fs/cgroup/cpuset/$NODE_CGROUP_ROOT/cpuset.mems"

  # Identities of the node's components (static tokens; the RBAC bindings for these users ship with
  # the API server: system:node via the Node authorizer, system:node-proxier, system:kube-*).
  NODE_TOKEN=$(openssl rand -hex 24)
  PROXY_TOKEN=$(openssl rand -hex 24)
  KCM_TOKEN=$(openssl rand -hex 24)
  SCHED_TOKEN=$(openssl rand -hex 24)
  printf '%s,system:node:%s,uid-node,"system:nodes"\n' "$NODE_TOKEN" "$NODE_NAME" > "$W/node-tokens.csv"
  printf '%s,system:kube-proxy,uid-kube-proxy\n' "$PROXY_TOKEN" >> "$W/node-tokens.csv"
  printf '%s,system:kube-controller-manager,uid-kcm\n' "$KCM_TOKEN" >> "$W/node-tokens.csv"
  printf '%s,system:kube-scheduler,uid-scheduler\n' "$SCHED_TOKEN" >> "$W/node-tokens.csv"
}

node_kubeconfig() { # node_kubeconfig FILE TOKEN
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$API_URL", certificate-authority: "$W/ca.crt"}
users:
- name: u
  user: {token: "$2"}
contexts:
- name: c
  context: {cluster: e2e, user: u}
current-context: c
KC
  chmod 600 "$1"
}

node_wait() { # node_wait WHAT LOG PID CMD...: until CMD succeeds (60 s), else fail with LOG
  local what=$1 log=$2 pid=$3 i; shift 3
  for i in $(seq 600); do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || fail "$what exited" "$log"
    sleep 0.1
  done
  fail "$what not ready after 60 s" "$log"
}

node_start() {
  local kc=$W/node-kubeconfigs
  mkdir -p "$kc" "$W/containerd" "$W/cni/net.d" "$W/cni/ipam" "$W/kubelet" "$W/pod-logs"
  node_kubeconfig "$kc/kubelet" "$NODE_TOKEN"
  node_kubeconfig "$kc/kube-proxy" "$PROXY_TOKEN"
  node_kubeconfig "$kc/controller-manager" "$KCM_TOKEN"
  node_kubeconfig "$kc/scheduler" "$SCHED_TOKEN"

  # Controllers: Deployments -> ReplicaSets -> Pods, garbage collection of owned objects, EndpointSlices,
  # ServiceAccount tokens and kube-root-ca.crt for in-cluster clients, the node lifecycle. No leader
  # election (one instance), no cloud, no node CIDR allocation (the bridge's range is the pod range).
  launch controller-manager "$W/controller-manager.log" "$BIN/kube-controller-manager" \
    --kubeconfig="$kc/controller-manager" --authentication-kubeconfig="$kc/controller-manager" \
    --authorization-kubeconfig="$kc/controller-manager" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0 --use-service-account-credentials=true \
    --service-account-private-key-file="$W/sa.key" --root-ca-file="$W/ca.crt" \
    --cluster-cidr="$POD_CIDR" --service-cluster-ip-range="$SERVICE_CIDR" --allocate-node-cidrs=false \
    --node-monitor-grace-period=20s --concurrent-deployment-syncs=5 --concurrent-gc-syncs=5
  launch scheduler "$W/scheduler.log" "$BIN/kube-scheduler" \
    --kubeconfig="$kc/scheduler" --authentication-kubeconfig="$kc/scheduler" \
    --authorization-kubeconfig="$kc/scheduler" --leader-elect=false --bind-address=127.0.0.1 --secure-port=0

  cat > "$W/containerd/config.toml" <<TOML
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$W/containerd/containerd.sock"
[ttrpc]
  address = "$W/containerd/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.1"
  stream_server_address = "127.0.0.1"
  netns_mounts_under_state_dir = true
  # This machine does not let root lower an oom_score_adj (no CAP_SYS_RESOURCE): the kubelet asks -998
  # for sandboxes, runc fails with "Permission denied". Clamp to containerd's own instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
TOML
  cat > "$W/cni/net.d/10-e2e.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "e2e", "plugins": [
  {"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$W/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
JSON
  launch containerd "$W/containerd.log" containerd --config "$W/containerd/config.toml"
  local ctr=(ctr --address "$W/containerd/containerd.sock" --namespace k8s.io)
  node_wait containerd "$W/containerd.log" "${pids[-1]}" "${ctr[@]}" version
  local t0 archive
  t0=$(date +%s%N)
  for archive in "$NODE_IMAGES"/*.tar; do
    "${ctr[@]}" images import --no-unpack=false "$archive" >>"$W/containerd-import.log" 2>&1 \
      || fail "ctr images import $archive failed" "$W/containerd-import.log"
  done
  echo "up.sh: imported $(ls "$NODE_IMAGES"/*.tar | wc -l) image archives in $(( ($(date +%s%N) - t0) / 1000000 )) ms" >&2

  read -r kubelet_port kubelet_healthz proxy_metrics < <(free_ports)
  # E2E_KUBELET_MAX_RESTART_PERIOD (e.g. 10s; `make chaos` sets it): the cap of the crash-loop back-off
  # (default 300 s). The chaos run SIGKILLs the operator's containers 20 times in minutes; at the default
  # cap each pod soon waits minutes to restart and both are down at once. Alpha in 1.34, so behind its
  # feature gate (KubeletCrashLoopBackOffMax); unset, the kubelet behaves as in any cluster.
  local backoff=
  if [ -n "${E2E_KUBELET_MAX_RESTART_PERIOD:-}" ]; then
    backoff="featureGates: {KubeletCrashLoopBackOffMax: true}
crashLoopBackOff: {maxContainerRestartPeriod: $E2E_KUBELET_MAX_RESTART_PERIOD}"
  fi
  cat > "$W/kubelet/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$W/ca.crt"}
authorization: {mode: Webhook}
containerRuntimeEndpoint: "unix://$W/containerd/containerd.sock"
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP_ROOT
# Kubernetes 1.34 still runs on cgroup v1 (these machines have no v2 hierarchy) when told to.
failCgroupV1: false
failSwapOn: false
podLogsDir: "$W/pod-logs"
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# A test machine's disk is shared with builds: evict only when it is truly full, never collect images
# (they come from archives, not a registry, and could not be pulled again).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
# Pod status and probe results reach the API server sooner than the 10 s default sync.
syncFrequency: 5s
$backoff
YAML
  launch kubelet "$W/kubelet.log" "$BIN/kubelet" --config="$W/kubelet/config.yaml" \
    --kubeconfig="$kc/kubelet" --root-dir="$W/kubelet" --cert-dir="$W/kubelet/pki" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1

  cat > "$W/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$kc/kube-proxy"}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
metricsBindAddress: 127.0.0.1:$proxy_metrics
healthzBindAddress: ""
# Pods reach Services on their own bridge: masquerade so replies come back through the host's conntrack.
iptables: {masqueradeAll: true, minSyncPeriod: 0s, syncPeriod: 30s}
# Leave the machine's conntrack table size alone.
conntrack: {maxPerCore: 0, min: 0}
YAML
  launch kube-proxy "$W/kube-proxy.log" "$BIN/kube-proxy" --config="$W/kube-proxy.yaml" --v=1

  # Ready = the node reports Ready to the API server (the kubelet registered it and the CNI is up).
  node_ready() {
    curl -fsS --cacert "$W/ca.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
      "$API_URL/api/v1/nodes/$NODE_NAME" \
      | jq -e '.status.conditions[] | select(.type == "Ready" and .status == "True")'
  }
  node_wait "the kubelet (node $NODE_NAME Ready)" "$W/kubelet.log" "${pids[-2]}" node_ready
}

# After the kubelet and kube-proxy have been stopped (SIGTERM, by stop_servers): the pods' processes,
# the shims, the mounts, then the machine-wide state.
node_stop() {
  node_cleanup "$W"
  rm -f "$NODE_RUN_DIR/workdir"
}
