#!/usr/bin/env bash
# Installs every Debian package pinguard needs to build, test, run its demo
# and its benchmark. Idempotent: a second run installs nothing new.
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

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# redis-server's package starts a system instance; the project runs its own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi
pgrep -x redis-server >/dev/null && pkill -f '/usr/bin/redis-server 127.0.0.1:6379' || true
echo "install-deps: ok"
