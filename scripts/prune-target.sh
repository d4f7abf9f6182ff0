#!/usr/bin/env bash
# Keeps the shared target directory from filling the disk. It outlives every
# clone and CI run that shares it, and Cargo never deletes what earlier build
# settings, toolchains or dependency versions left in it:
#   - the build settings changed (Cargo.toml's [profile.*] sections or the
#     toolchain), or were never recorded: every profile's output is stale;
#   - a profile's output is past PRUNE_GB (default 8; the debug build takes
#     about 3 GB, the release build 2): most of it is stale;
#   - CI=true: the incremental caches (make builds without them there).
# What is cleared is built again by the next cargo command.
set -euo pipefail
target=${CARGO_TARGET_DIR:?set CARGO_TARGET_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
stamp="$target/.iotflow-build-settings"
# The profile sections' settings, less comments (a comment edit changes no artifact).
settings=$({ awk '/^\[/ { p = /^\[profile/ } p && !/^[[:space:]]*(#|$)/' "$here/Cargo.toml"; rustc -V; } | sha256sum | cut -d' ' -f1)
profiles=(debug release tools)
if [ ! -d "$target" ]; then
  mkdir -p "$target"
elif [ ! -f "$stamp" ] && [ ! -f "$target/CACHEDIR.TAG" ]; then
  echo "prune-target: $target is not a cargo target directory: left alone" >&2
  exit 0
elif [ "$(cat "$stamp" 2>/dev/null)" != "$settings" ]; then
  echo "prune-target: build settings changed since $target was built: clearing ${profiles[*]}"
  for p in "${profiles[@]}"; do rm -rf "${target:?}/$p"; done
fi
for p in "${profiles[@]}"; do
  [ -d "$target/$p" ] || continue
  gb=$(du -s --block-size=1G "$target/$p" | cut -f1)
  if [ "$gb" -gt "${PRUNE_GB:-8}" ]; then
    echo "prune-target: $target/$p takes $gb GB, mostly stale artifacts: clearing it"
    rm -rf "${target:?}/$p"
  fi
done
if [ "${CI:-}" = true ]; then
  rm -rf "$target/debug/incremental"
fi
echo "$settings" > "$stamp"
