#!/usr/bin/env bash
# Set up .venv (no-op when up to date) and run the test suite.
#
#   ./test.sh                 everything (GPU tests skip themselves without CUDA)
#   ./test.sh -m "not slow"   quick subset; any pytest arguments are passed through
#   ./test.sh test/model/test_stream_equals_clip.py -x
#
# Fails when a test fails and when no test ran at all.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
./setup.sh
# Keep DDS on loopback for anything started outside pytest's own isolation too.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# Lint first: cheap, and a finding fails the run like a failing test (rules in ruff.toml).
.venv/bin/ruff check . || { echo "[test] error: ruff found problems (see above; ruff.toml has the rules)" >&2; exit 1; }
REPORT="$(mktemp -t tv3s-junit-XXXXXX.xml)"
trap 'rm -f "$REPORT"' EXIT
status=0
.venv/bin/python -m pytest --junitxml="$REPORT" "$@" || status=$?
if [[ $status -ne 0 ]]; then
  [[ $status -eq 5 ]] && echo "[test] error: pytest collected no tests" >&2
  exit $status
fi
ran="$(.venv/bin/python - "$REPORT" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
print(sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites))
PY
)"
if [[ "$ran" -le 0 ]]; then
  echo "[test] error: no test actually ran (all skipped or deselected)" >&2
  exit 1
fi
echo "[test] $ran tests ran"
