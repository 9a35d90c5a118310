#!/usr/bin/env bash
# The test suite, from a fresh machine: set up, then pytest (unit, property, interop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest "$@"
