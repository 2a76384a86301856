#!/usr/bin/env bash
# Tests a release archive made by scripts/package.sh: its checksum against checksums.txt
# beside it, its layout, and `promptmq --version` of the unpacked binary.
#
# Usage: scripts/test-archive.sh [--no-run] ARCHIVE
#   --no-run   the binary is for another platform: instead of running it, look for the
#              version string in its bytes
#
# Environment (both optional; .ci/run and the release workflow set them):
#   EXPECT_VERSION  e.g. 0.1.0       the version --version must print
#   EXPECT_COMMIT   git rev-parse --short=12 HEAD   the commit --version must print
#
# Portable: Linux, macOS (bash 3.2) and Git Bash on Windows.
set -euo pipefail

run=1
if [ "${1:-}" = --no-run ]; then
  run=0
  shift
fi
[ $# -eq 1 ] || {
  sed -n '5,7p' "$0" >&2
  exit 2
}
archive="$1"
name="$(basename "$archive")"
dir="$(cd "$(dirname "$archive")" && pwd)"
fail() {
  echo "test-archive: $name: $*" >&2
  exit 1
}

case "$name" in
  *.tar.gz) base="${name%.tar.gz}" exe=promptmq ;;
  *.zip) base="${name%.zip}" exe=promptmq.exe ;;
  *) fail "not a .tar.gz or .zip" ;;
esac

# 1. Checksum: the archive's line of checksums.txt, checked with sha256sum -c (shasum on macOS).
[ -f "$dir/checksums.txt" ] || fail "no checksums.txt beside it"
line="$(grep -E "^[0-9a-f]{64}  $name\$" "$dir/checksums.txt" || true)"
[ -n "$line" ] || fail "no line for it in checksums.txt"
if command -v sha256sum >/dev/null 2>&1; then
  (cd "$dir" && printf '%s\n' "$line" | sha256sum -c -) || fail "checksum mismatch"
else
  (cd "$dir" && printf '%s\n' "$line" | shasum -a 256 -c -) || fail "checksum mismatch"
fi

# 2. Unpack into a scratch directory and check the layout: exactly these files.
work="$(mktemp -d "${TMPDIR:-/tmp}/promptmq-test-archive.XXXXXX")"
trap 'rm -rf "$work"' EXIT
case "$name" in
  *.tar.gz) tar -xzf "$dir/$name" -C "$work" ;;
  *.zip)
    # Extract from inside $work, so that native Windows tools (7z) get no MSYS output path.
    if command -v unzip >/dev/null 2>&1; then
      (cd "$work" && unzip -q "$dir/$name")
    elif command -v 7z >/dev/null 2>&1; then
      (cd "$work" && 7z x -bso0 -bsp0 "$dir/$name" >/dev/null)
    else
      (cd "$work" && python3 -m zipfile -e "$dir/$name" .)
    fi
    ;;
esac
expected="$(printf '%s\n' "$base/$exe" "$base/README.md" "$base/LICENSE" "$base/CHANGELOG.md" \
  "$base/examples/promptmq.env" "$base/examples/promptmq.yaml" "$base/deploy/promptmq.service" | LC_ALL=C sort)"
actual="$(cd "$work" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)"
if [ "$actual" != "$expected" ]; then
  printf 'expected:\n%s\nfound:\n%s\n' "$expected" "$actual" >&2
  fail "unexpected layout"
fi
bin="$work/$base/$exe"

# 3. The version and commit: run it, or (another platform's binary) find the string in it.
pattern='^promptmq [0-9]+\.[0-9]+\.[0-9]+[-+.0-9A-Za-z]* \([0-9a-f]{7,40}\)$'
if [ "$run" -eq 1 ]; then
  [ -x "$bin" ] || fail "$exe is not executable"
  out="$("$bin" --version | tr -d '\r')" || fail "$exe --version failed"
  echo "$exe --version: $out"
  printf '%s\n' "$out" | grep -Eq "$pattern" || fail "--version printed '$out', want 'promptmq X.Y.Z (<git commit>)'"
  if [ -n "${EXPECT_VERSION:-}" ]; then
    case "$out" in "promptmq $EXPECT_VERSION ("*) ;; *) fail "--version printed '$out', want version $EXPECT_VERSION" ;; esac
  fi
  if [ -n "${EXPECT_COMMIT:-}" ]; then
    case "$out" in *" ($EXPECT_COMMIT)") ;; *) fail "--version printed '$out', want commit $EXPECT_COMMIT" ;; esac
  fi
else
  if [ -n "${EXPECT_VERSION:-}" ] && [ -n "${EXPECT_COMMIT:-}" ]; then
    grep -aqF "$EXPECT_VERSION ($EXPECT_COMMIT)" "$bin" || fail "'$EXPECT_VERSION ($EXPECT_COMMIT)' not found in $exe"
    echo "$exe contains '$EXPECT_VERSION ($EXPECT_COMMIT)' (not run: another platform)"
  else
    grep -aqE '[0-9]+\.[0-9]+\.[0-9]+[^ ]* \([0-9a-f]{7,40}\)' "$bin" || fail "no version string with a git commit in $exe"
    echo "$exe contains a version string with a git commit (not run: another platform)"
  fi
fi
echo "ok: $name"
