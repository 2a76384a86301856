#!/usr/bin/env bash
# Release notes for a tag: the commits since the previous v* tag, as a Markdown list.
# The release workflow publishes its output as the GitHub release's text.
#
# Usage: scripts/release-notes.sh [TAG]    (default: HEAD, i.e. "what the next tag would get")
# Needs the full history and tags (actions/checkout with fetch-depth: 0).
set -euo pipefail

tag="${1:-HEAD}"
git rev-parse --verify --quiet "$tag^{commit}" >/dev/null || {
  echo "release-notes: unknown tag or commit '$tag'" >&2
  exit 1
}
# The newest v* tag reachable from the tag's parent: the previous release.
prev="$(git describe --tags --abbrev=0 --match 'v*' "$tag^" 2>/dev/null || true)"
if [ -n "$prev" ]; then
  range="$prev..$tag"
  since="Changes since $prev"
else
  range="$tag"
  since="Changes (first release)"
fi

echo "## $since"
echo
git log --no-merges --reverse --format='- %s (%h)' "$range"
echo
echo "Archives for Linux (x86_64, arm64), macOS (x86_64, arm64) and Windows (x86_64) are attached;"
echo "check them with \`sha256sum -c checksums.txt --ignore-missing\`. See CHANGELOG.md and the README's"
echo "Releases section for what is built and tested where."
