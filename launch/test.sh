#!/usr/bin/env bash
# Installs the project with its test tools and runs the default test suite.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -m slow`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements-dev.txt
python -m pytest "$@"
