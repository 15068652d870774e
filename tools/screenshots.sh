#!/usr/bin/env bash
# Regenerates the README's and docs/classroom.md's pictures from real runs (`make screenshots`):
# the demo report (English and Portuguese) rendered by headless Chromium, and the story slide.
# Needs chromium (apt-get install chromium) and what `lab demo` needs (root or user namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=.venv/bin/lab
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "screenshots: no chromium found (apt-get install chromium)" >&2
    exit 2
fi
shoot() {  # shoot REPORT.html PICTURE.png HEIGHT
    "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,"$3" \
        --screenshot="$2" "file://$(realpath "$1")" 2>/dev/null
}
COLUMNS=100 "$LAB" demo --out "$OUT/en" --slides > "$OUT/en.txt"
COLUMNS=100 "$LAB" report "$OUT/en" --lang pt > /dev/null
cp "$OUT/en/report.html" "$OUT/report-pt.html"
"$LAB" report "$OUT/en" > /dev/null  # back to English
shoot "$OUT/en/report.html" docs/img/demo-report.png 2400
shoot "$OUT/report-pt.html" docs/img/demo-report-pt.png 2400
cp "$OUT/en/slides/story.png" docs/img/demo-story.png
echo "wrote docs/img/demo-report.png, docs/img/demo-report-pt.png, docs/img/demo-story.png"
