#!/usr/bin/env bash
# Set up .venv (first run only) and start imagesynth on its embedded defaults: SQLite, local
# files and an in-process worker under ~/.imagesynth, demo weights built offline on first
# start. Arguments go to `imagesynth serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
exec .venv/bin/imagesynth serve "$@"
