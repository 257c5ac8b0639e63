#!/usr/bin/env bash
# Builds the ferrolb container image: one static binary on an empty ("scratch") base, with
# /etc/passwd and /etc/group for the non-root user 65532 and nothing else (no shell, no libc,
# no CA bundle: in a cluster the client reads the service-account token and CA Kubernetes mounts).
#
#   ./scripts/image.sh [--out FILE] [--tag NAME:TAG]
#
# Uses Debian's buildah (installed with apt-get when missing), no registry and no daemon. Writes
# an OCI archive (default target/image/ferrolb-oci.tar) and also leaves the image in buildah's
# local storage as NAME:TAG (default localhost/ferrolb:VERSION), then prints its size and the
# manifest digest a registry will show after `skopeo copy oci-archive:FILE docker://...`.
# The binary is built as the calling user (cargo profile `image`, `+crt-static`, its own target
# directory target/image); buildah and apt-get need root and go through sudo when not root.
# The Dockerfile builds the same image for docker users; crates/ferrolb-lab/tests/image.rs
# checks the two recipes agree (entrypoint, cmd, user, labels, files).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/image/ferrolb-oci.tar
tag=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "image.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Root for buildah/apt-get: ourselves, or sudo when it exists.
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    echo "image.sh: buildah needs root and sudo is not installed: run this as root" >&2
    exit 1
  fi
fi

if ! command -v buildah >/dev/null; then
  echo "installing: buildah runc"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends buildah runc >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "image.sh: cargo is not on PATH (under sudo? run ./scripts/image.sh as yourself; it uses sudo for buildah)" >&2
  exit 1
fi

# 1. The static binary. The host triple is given explicitly so that +crt-static applies to the
#    binary only, not to build scripts and proc macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
echo "== cargo build --profile image --target $triple (static)"
# Started from `cargo test` (tests/image.rs) the variables cargo sets for a test would enter
# build fingerprints (ring's build script tracks CARGO_MANIFEST_DIR) and rebuild everything.
unset CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
for v in $(compgen -e | grep -E '^CARGO_(PKG_|MANIFEST_|CRATE_|BIN_|TARGET_TMPDIR|PRIMARY_PACKAGE)'); do
  unset "$v"
done
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --quiet --profile image --target "$triple" --target-dir target/image \
  -p ferrolb-lab --bin ferrolb
bin="target/image/$triple/image/ferrolb"
if ! ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
  echo "image.sh: $bin is dynamically linked:" >&2
  ldd "$bin" >&2
  exit 1
fi
version=$("$bin" --version | awk '{print $2}')

revision=unknown
if git rev-parse HEAD >/dev/null 2>&1; then
  revision=$(git rev-parse HEAD)
  [ -z "$(git status --porcelain --untracked-files=no)" ] || revision="$revision-dirty"
fi
# The source label is a URL: the origin remote when it is one (a clone of a local path is not).
remote=$(git remote get-url origin 2>/dev/null || true)
case "$remote" in https://*|git@*) ;; *) remote=https://ferrolb.io ;; esac
source_url=${FERROLB_IMAGE_SOURCE:-$remote}
created=$(git log -1 --format=%ct 2>/dev/null || date +%s)
[ -n "$tag" ] || tag="localhost/ferrolb:$version"

# 2. The image, from scratch. Same layout as the Dockerfile's final stage.
echo "== buildah from scratch → $tag"
ctr=$("${as_root[@]}" buildah from --quiet scratch)
trap '"${as_root[@]}" buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${as_root[@]}" buildah copy --quiet --chown 0:0 --chmod 0755 "$ctr" "$bin" /usr/local/bin/ferrolb
"${as_root[@]}" buildah copy --quiet --chown 0:0 --chmod 0644 "$ctr" scripts/image-rootfs/etc/passwd /etc/passwd
"${as_root[@]}" buildah copy --quiet --chown 0:0 --chmod 0644 "$ctr" scripts/image-rootfs/etc/group /etc/group
"${as_root[@]}" buildah config \
  --os linux --arch "$("${as_root[@]}" buildah info --format '{{.host.arch}}')" \
  --user 65532:65532 \
  --entrypoint '["/usr/local/bin/ferrolb"]' \
  --cmd '["--help"]' \
  --label org.opencontainers.image.title=ferrolb \
  --label "org.opencontainers.image.description=Layer 2 LoadBalancer for bare-metal Kubernetes (controller and agent)" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.source=$source_url" \
  "$ctr"
"${as_root[@]}" buildah commit --quiet --format oci --identity-label=false --timestamp "$created" "$ctr" "$tag" >/dev/null

# 3. The OCI archive, and what to tell the user.
mkdir -p "$(dirname "$out")"
rm -f "$out" "$out.digest"
"${as_root[@]}" buildah push --quiet --digestfile "$out.digest" "$tag" "oci-archive:$out:$tag"
if [ ${#as_root[@]} -gt 0 ]; then
  "${as_root[@]}" chown "$(id -u):$(id -g)" "$out" "$out.digest"
fi
digest=$(cat "$out.digest")
size=$(stat -c %s "$out")
unpacked=$(stat -c %s "$bin")
echo "image:   $tag"
echo "archive: $out ($(numfmt --to=iec-i --suffix=B "$size"), binary $(numfmt --to=iec-i --suffix=B "$unpacked") uncompressed)"
echo "digest:  $digest"
echo "push:    skopeo copy oci-archive:$out docker://REGISTRY/ferrolb:$version"
