#!/usr/bin/env bash
# Applies automerge-0.12-remove-ancestors.patch to a copy of the registry
# source (outside the tree), runs Automerge's own unit tests on it, then
# the receive bench against it. Nothing in the tree changes; Cargo.lock is
# restored. Builds go to their own target dirs (a few minutes the first time).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=${TMPDIR:-/tmp}/huskies-automerge-patch
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/automerge-0.12.0 2>/dev/null | head -1)
if [ -z "$src" ]; then
  (cd "$root" && cargo fetch -q)
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/automerge-0.12.0 | head -1)
fi
rm -rf "$work" && mkdir -p "$work" && cp -r "$src" "$work/automerge" && chmod -R u+w "$work/automerge"
patch -s -d "$work/automerge" -p1 < "$here/automerge-0.12-remove-ancestors.patch"
(cd "$work/automerge" && CARGO_TARGET_DIR="$work/target-test" cargo test -q --lib)
cp "$root/Cargo.lock" "$work/Cargo.lock.orig"
trap 'cp "$work/Cargo.lock.orig" "$root/Cargo.lock"' EXIT
(cd "$root" && CARGO_TARGET_DIR="$work/target-bench" cargo bench -q -p huskies-benches --bench receive \
  --config "patch.crates-io.automerge.path=\"$work/automerge\"")
