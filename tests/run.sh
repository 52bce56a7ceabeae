#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets up a machine and runs every test: Debian packages, the Kafka jars, the
# Python test clients, the build, the local Kafka and Redis, then ctest (unit
# and integration). Services are stopped at the end unless KEEP_SERVICES=1.
# Usage: bash tests/run.sh [ctest args...]   e.g. -L unit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash deploy/install-deps.sh
bash deploy/setup-python.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPINGUARD_WERROR="${PG_WERROR:-OFF}" >/dev/null
cmake --build build

bash deploy/local/up.sh
if [ "${KEEP_SERVICES:-0}" != 1 ]; then
  trap 'bash deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fi
ctest --test-dir build --output-on-failure "$@"
