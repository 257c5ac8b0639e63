#!/usr/bin/env bash
# scripts/controller-mem.sh BIN [N] [heaptrack]: one controller against the stand-in on loopback, N lab-like
# IPv6 Services created at once (16 kubectl processes in parallel); prints the time until all are
# addressed and the controller's VmHWM/VmRSS. With a third argument the controller runs under
# heaptrack and its profile is kept in the printed directory. Loopback only; no root needed.
set -euo pipefail
BIN=$(readlink -f "$1"); N=${2:-10000}; HT=${3:-}
D=$(mktemp -d /tmp/ctlmem.XXXX); PORT=$((20000 + RANDOM % 20000))
# The controller stops first (under heaptrack $CTL is the wrapper and the controller its child,
# found once it runs), while the stand-in still answers its lease release; then the rest.
CPID=
cleanup() {
  [ -n "$CPID" ] || CPID=$(pgrep -P "${CTL:-0}" -f controller | head -1 || true)
  kill $CPID $CTL 2>/dev/null || true
  for _ in $(seq 100); do kill -0 ${CPID:-$CTL} 2>/dev/null || break; sleep 0.1; done
  kill -9 $CPID $CTL 2>/dev/null || true
  kill $API 2>/dev/null || true; wait 2>/dev/null || true; [ -n "$HT" ] || rm -rf "$D"
}
trap cleanup EXIT
"$BIN" dev-apiserver --listen 127.0.0.1:$PORT --kubeconfig-out $D/kc --crds "$(dirname "$0")/../deploy/crds" --log-level warn >$D/api.log 2>&1 & API=$!
for i in $(seq 100); do [ -s $D/kc ] && kubectl --kubeconfig $D/kc get --raw /version >/dev/null 2>&1 && break; sleep 0.1; done
K="kubectl --kubeconfig $D/kc"
CTL=; cat <<Y | $K apply -f - >/dev/null
apiVersion: v1
kind: Namespace
metadata: {name: ferrolb-system}
---
apiVersion: ferrolb.io/v1alpha1
kind: LoadBalancerIPPool
metadata: {name: v6}
spec: {blocks: [{cidr: "2001:db8:100::/64"}]}
Y
if [ -n "$HT" ]; then
  heaptrack -o $D/heap "$BIN" controller --kubeconfig $D/kc --identity c0 --metrics-addr off --log-level warn >$D/ctl.log 2>&1 & CTL=$!
else
  "$BIN" controller --kubeconfig $D/kc --identity c0 --metrics-addr off --log-level warn >$D/ctl.log 2>&1 & CTL=$!
fi
sleep 3
python3 - "$N" "$D" <<'P'
import sys
n=int(sys.argv[1]); d=sys.argv[2]
per=(n+15)//16
for k in range(16):
    with open(f"{d}/svc{k}.yaml","w") as f:
        for i in range(k*per, min(n,(k+1)*per)):
            f.write(f"""---
apiVersion: v1
kind: Service
metadata: {{name: load-{i+1}, namespace: default, labels: {{app: echo}}}}
spec:
  type: LoadBalancer
  selector: {{app: echo}}
  ipFamilyPolicy: SingleStack
  ipFamilies: [IPv6]
  allocateLoadBalancerNodePorts: false
  ports: [{{name: http, port: 80, targetPort: 80, protocol: TCP}}]
""")
P
T0=$(date +%s.%N)
KP=(); for k in $(seq 0 15); do $K create -f $D/svc$k.yaml >/dev/null & KP+=($!); done; wait "${KP[@]}" 
T1=$(date +%s.%N)
echo "created in $(echo "$T1 - $T0" | bc) s"
while :; do
  n=$($K get svc -A -o jsonpath='{range .items[*]}{.status.loadBalancer.ingress[0].ip}{"\n"}{end}' | grep -c . || true)
  [ "$n" -ge "$N" ] && break
  sleep 1
done
T2=$(date +%s.%N)
echo "all $N addressed $(echo "$T2 - $T0" | bc) s after the first create"
sleep 5
PID=$CTL; [ -n "$HT" ] && PID=$(pgrep -P $CTL -f "controller" | head -1 || echo $CTL); CPID=$PID
grep -E "VmHWM|VmRSS" /proc/$PID/status
[ -n "$HT" ] && echo "heaptrack profile in: $D"; true
