#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Creates .venv with the test-only Python packages of tests/requirements.txt
# (idempotent: skipped while the requirements are unchanged).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
stamp=.venv/.requirements
if [ -x .venv/bin/python ] && cmp -s tests/requirements.txt "$stamp"; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
cp tests/requirements.txt "$stamp"
