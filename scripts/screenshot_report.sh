#!/usr/bin/env bash
# Renders a compare report in headless Chromium and saves a PNG screenshot of it:
#   scripts/screenshot_report.sh out/compare/report.html report.png [WIDTH HEIGHT]
# Used by the browser test of the report and for the README's picture. Exit 77 when no Chromium
# is installed (scripts/setup.sh installs Debian's `chromium`).
set -euo pipefail
html=$(realpath "$1")
png=$(realpath -m "$2")
width=${3:-1000}
height=${4:-2600}
browser=""
for candidate in chromium chromium-browser google-chrome; do
  if command -v "$candidate" >/dev/null 2>&1; then browser=$candidate; break; fi
done
if [[ -z "$browser" ]]; then
  echo "screenshot_report: no Chromium found (install Debian's chromium: scripts/setup.sh)" >&2
  exit 77
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: the sandbox cannot start as root (CI containers); the page is our own file.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --user-data-dir="$profile" \
  --window-size="$width,$height" --screenshot="$png" "file://$html" >"$profile/log" 2>&1 || {
  cat "$profile/log" >&2
  exit 1
}
[[ -s "$png" ]] || { echo "screenshot_report: $browser wrote no $png" >&2; cat "$profile/log" >&2; exit 1; }
