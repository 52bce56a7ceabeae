#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every Debian package pinguard needs to build, test, run its demo
# and its benchmark. Idempotent: a second run installs nothing new. Stops no
# process it did not start: only when this run installed redis-server does it
# stop the system instance that the package's own install just started
# (deploy/local runs its own Redis), through the package's service, which
# knows that instance's pid.
set -euo pipefail

pkgs=(
  build-essential cmake ninja-build pkg-config clang-format
  clang libclang-rt-14-dev
  librdkafka-dev libavro-dev libhiredis-dev check libsubunit-dev
  libmicrohttpd-dev libjansson-dev
  redis-server redis-tools kafkacat
  openjdk-17-jre-headless maven
  python3 python3-venv valgrind time curl procps jq
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

installs_redis=0
for p in "${missing[@]}"; do
  if [ "$p" = redis-server ]; then installs_redis=1; fi
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ((${#missing[@]})); then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The redis-server package starts (and under systemd enables) a system
# instance on 127.0.0.1:6379, the port deploy/local uses. Stop it only when
# this run installed the package: a Redis that was there before is someone's.
if ((installs_redis)); then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet redis-server 2>/dev/null; then
      $sudo systemctl stop redis-server || true
      $sudo systemctl disable --quiet redis-server 2>/dev/null || true
      echo "install-deps: stopped and disabled the redis-server service just installed" >&2
    fi
  elif [ -x /etc/init.d/redis-server ]; then
    # No systemd (a container): the init script stops the instance by its pidfile.
    if $sudo /etc/init.d/redis-server status >/dev/null 2>&1; then
      $sudo /etc/init.d/redis-server stop >/dev/null || true
      echo "install-deps: stopped the redis-server instance the package just started" >&2
    fi
  fi
fi
echo "install-deps: ok"
