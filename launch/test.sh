#!/usr/bin/env bash
# Installs the project with its test tools, checks the code with ruff (lint
# and format) and runs the default test suite.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -m slow`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" requirements-dev.txt
echo "== ruff check and ruff format --check"
ruff check .
ruff format --check .
python -m pytest "$@"
