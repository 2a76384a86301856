#!/usr/bin/env bash
# Packages a built `promptmq` binary into the release archive for one target, and writes
# checksums.txt. The release workflow (.github/workflows/release.yml) runs this script as it
# is, and scripts/check-release.sh runs it for the host target in .ci/run, so the archive
# names and layout checked here are the ones that are published.
#
# Usage:
#   scripts/package.sh TARGET [BINARY_DIR]   archive target/TARGET/release/promptmq (or BINARY_DIR)
#                                            into $DIST_DIR, then rewrite $DIST_DIR/checksums.txt
#   scripts/package.sh --name TARGET         print the archive file name for TARGET
#   scripts/package.sh --checksums [DIR]     (re)write DIR/checksums.txt over DIR/promptmq_*
#
# Environment:
#   DIST_DIR            output directory (default: dist)
#   PROMPTMQ_MAX_GLIBC  Linux targets: fail if the binary needs a newer glibc (e.g. 2.28)
#
# Archive layout (the same for every target): one top directory named like the archive,
#   promptmq_<Os>_<arch>/
#     promptmq            (promptmq.exe on Windows)
#     README.md  LICENSE  CHANGELOG.md
#     examples/promptmq.env  examples/promptmq.yaml  deploy/promptmq.service
# .tar.gz everywhere except Windows (.zip). checksums.txt is SHA-256 in `sha256sum -c` format.
#
# Portable on purpose: it also runs under macOS's bash 3.2 and BSD tools, and Git Bash on Windows.
set -euo pipefail

usage() {
  sed -n '7,11p' "$0" >&2
  exit 2
}

# Target triple -> archive base name. The only place that spells the names.
archive_base() {
  case "$1" in
    x86_64-unknown-linux-gnu | x86_64-unknown-linux-musl) echo promptmq_Linux_x86_64 ;;
    aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl) echo promptmq_Linux_arm64 ;;
    x86_64-apple-darwin) echo promptmq_Darwin_x86_64 ;;
    aarch64-apple-darwin) echo promptmq_Darwin_arm64 ;;
    x86_64-pc-windows-msvc) echo promptmq_Windows_x86_64 ;;
    *)
      echo "package.sh: no archive name for target '$1'" >&2
      return 1
      ;;
  esac
}

archive_ext() {
  case "$1" in
    *-windows-*) echo zip ;;
    *) echo tar.gz ;;
  esac
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# Writes DIR/checksums.txt: "<sha256>  <file name>" per archive, sorted by name, the format
# `sha256sum -c checksums.txt` reads.
write_checksums() {
  local dir="$1" f found=0
  : >"$dir/checksums.txt.tmp"
  for f in "$dir"/promptmq_*.tar.gz "$dir"/promptmq_*.zip; do
    [ -f "$f" ] || continue
    found=1
    printf '%s  %s\n' "$(sha256_of "$f")" "$(basename "$f")" >>"$dir/checksums.txt.tmp"
  done
  if [ "$found" -eq 0 ]; then
    rm -f "$dir/checksums.txt.tmp"
    echo "package.sh: no promptmq_* archive in $dir" >&2
    return 1
  fi
  LC_ALL=C sort -k2 "$dir/checksums.txt.tmp" >"$dir/checksums.txt"
  rm -f "$dir/checksums.txt.tmp"
  echo "wrote $dir/checksums.txt"
}

# Highest GLIBC_x.y symbol version an ELF binary needs ("" if none or not ELF).
glibc_needed() {
  command -v readelf >/dev/null 2>&1 || return 0
  readelf -W --version-info "$1" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' |
    sort -u -t. -k1,1n -k2,2n -k3,3n | tail -n 1 || true
}

# 0 if version $1 <= $2 (dotted numbers).
version_le() {
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -t. -k1,1n -k2,2n -k3,3n | head -n 1)" = "$1" ]
}

zip_dir() { # zip_dir OUT.zip DIR (run from DIR's parent)
  if command -v 7z >/dev/null 2>&1; then
    7z a -tzip -mx=9 -bso0 -bsp0 "$1" "$2" >/dev/null
  elif command -v zip >/dev/null 2>&1; then
    zip -qrX9 "$1" "$2"
  else
    python3 -m zipfile -c "$1" "$2"
  fi
}

case "${1:-}" in
  "" | -h | --help) usage ;;
  --name)
    [ $# -eq 2 ] || usage
    base="$(archive_base "$2")" || exit 1
    echo "$base.$(archive_ext "$2")"
    exit 0
    ;;
  --checksums)
    [ $# -le 2 ] || usage
    write_checksums "${2:-${DIST_DIR:-dist}}"
    exit 0
    ;;
esac

[ $# -le 2 ] || usage
target="$1"
base="$(archive_base "$target")"
ext="$(archive_ext "$target")"
bin_dir="${2:-target/$target/release}"
dist="${DIST_DIR:-dist}"
root="$(cd "$(dirname "$0")/.." && pwd)"

exe=promptmq
case "$target" in *-windows-*) exe=promptmq.exe ;; esac
if [ ! -f "$bin_dir/$exe" ]; then
  echo "package.sh: $bin_dir/$exe not found (build it first: cargo build --release -p promptmq --target $target)" >&2
  exit 1
fi

case "$target" in
  *-linux-gnu)
    need="$(glibc_needed "$bin_dir/$exe")"
    if [ -n "$need" ]; then
      echo "$exe needs glibc >= $need"
      if [ -n "${PROMPTMQ_MAX_GLIBC:-}" ] && ! version_le "$need" "$PROMPTMQ_MAX_GLIBC"; then
        echo "package.sh: $exe needs glibc $need, more than PROMPTMQ_MAX_GLIBC=$PROMPTMQ_MAX_GLIBC" >&2
        exit 1
      fi
    fi
    ;;
esac

mkdir -p "$dist"
dist="$(cd "$dist" && pwd)"
stage="$(mktemp -d "${TMPDIR:-/tmp}/promptmq-package.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

top="$stage/$base"
mkdir -p "$top/examples"
cp "$bin_dir/$exe" "$top/$exe"
chmod 755 "$top/$exe"
for f in README.md LICENSE CHANGELOG.md; do
  cp "$root/$f" "$top/$f"
done
mkdir -p "$top/deploy"
for f in examples/promptmq.env examples/promptmq.yaml deploy/promptmq.service; do
  cp "$root/$f" "$top/$f"
done

out="$dist/$base.$ext"
rm -f "$out"
if [ "$ext" = zip ]; then
  (cd "$stage" && zip_dir "$out" "$base")
else
  # GNU tar: a reproducible archive (fixed owner, order and mtime). bsdtar (macOS): plain.
  if tar --version 2>/dev/null | grep -q 'GNU tar'; then
    mtime="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"
    (cd "$stage" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$mtime" -cf - "$base") |
      gzip -9n >"$out"
  else
    (cd "$stage" && tar -cf - "$base") | gzip -9n >"$out"
  fi
fi
echo "wrote $out"
write_checksums "$dist"
