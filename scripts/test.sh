#!/usr/bin/env bash
# The test suite, from a fresh machine: set up (scripts/setup.sh: system tools, .venv/), then
# pytest in the project's virtual environment with the given arguments (unit, property,
# interop).  Tests that need ../shared (real-world descriptors, DMTF schemas) skip with a reason
# when it is absent; .ci/run sets OVFSTREAM_REQUIRE_SHARED=1 so CI fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"
exec .venv/bin/python -m pytest "$@"
