#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# deploy/kafka/fetch.sh — owns the Apache Kafka jar cache.
#
# Resolves org.apache.kafka:kafka_2.13 + kafka-tools (version from pom.xml,
# next to this script) and their runtime dependencies with Maven into
#   ${PGLOCAL_CACHE:-<repo>/.cache}/kafka-<version>/libs
# Idempotent: a stamp file (<cache>/kafka-<version>/.complete, holding the
# version and the pom's sha256) marks a complete download and skips Maven.
# Progress goes to stderr; the libs dir is the only (last) line on stdout.
#
#   fetch.sh              fetch if needed, print the libs dir
#   fetch.sh --print-dir  print the libs dir without fetching; exit 1 if
#                         the cache is not complete
#   fetch.sh --force      fetch again even if the stamp is valid
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
pom="$here/pom.xml"

version="$(sed -n 's:.*<kafka\.version>\([^<]*\)</kafka\.version>.*:\1:p' "$pom" | head -n1)"
[ -n "$version" ] || { echo "fetch.sh: no <kafka.version> in $pom" >&2; exit 1; }

cache="${PGLOCAL_CACHE:-$repo/.cache}"
base="$cache/kafka-$version"
libs="$base/libs"
stamp="$base/.complete"

mode=fetch
case "${1:-}" in
  "") ;;
  --print-dir) mode=print ;;
  --force) mode=force ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "fetch.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

want_stamp() {
  printf 'version=%s\npom-sha256=%s\n' "$version" "$(sha256sum "$pom" | cut -d' ' -f1)"
}

# The jars and classes the local scripts rely on; class names are stored
# uncompressed in a jar's central directory, so grep -a finds them (no unzip).
verify() {
  local d="$1" f
  for f in "kafka_2.13-$version.jar" "kafka-tools-$version.jar" "kafka-clients-$version.jar"; do
    [ -s "$d/$f" ] || { echo "fetch.sh: missing $d/$f" >&2; return 1; }
  done
  compgen -G "$d/reload4j-*.jar" >/dev/null || { echo "fetch.sh: reload4j missing in $d (broker would log nothing)" >&2; return 1; }
  compgen -G "$d/slf4j-reload4j-*.jar" >/dev/null || { echo "fetch.sh: slf4j-reload4j missing in $d" >&2; return 1; }
  grep -aq 'kafka/tools/StorageTool.class' "$d/kafka_2.13-$version.jar" || { echo "fetch.sh: kafka.tools.StorageTool not in kafka_2.13" >&2; return 1; }
  grep -aq 'kafka/Kafka.class' "$d/kafka_2.13-$version.jar" || { echo "fetch.sh: kafka.Kafka not in kafka_2.13" >&2; return 1; }
  grep -aq 'org/apache/kafka/tools/TopicCommand.class' "$d/kafka-tools-$version.jar" || { echo "fetch.sh: TopicCommand not in kafka-tools" >&2; return 1; }
}

complete() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(want_stamp)" ] && [ -d "$libs" ]; }

if [ "$mode" = print ]; then
  echo "$libs"
  complete
  exit
fi

mkdir -p "$base"
# Serialise concurrent fetches (parallel CI steps, up.sh + a test script).
exec 8>"$base/.lock"
flock -w 600 8 || { echo "fetch.sh: could not lock $base/.lock" >&2; exit 1; }

if [ "$mode" = fetch ] && complete; then
  echo "$libs"
  exit 0
fi

command -v mvn >/dev/null || { echo "fetch.sh: mvn not found (deploy/install-deps.sh installs it)" >&2; exit 1; }

tmp="$base/libs.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "fetch.sh: resolving Kafka $version jars into $libs" >&2
mvn_args=(-q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=$tmp")
# Offline first: a warm ~/.m2 needs no network (and works in sandboxed CI).
if ! mvn -o "${mvn_args[@]}" >/dev/null 2>&1; then
  echo "fetch.sh: offline resolution failed, trying the network" >&2
  rm -rf "$tmp"
  mvn "${mvn_args[@]}" >&2
fi
verify "$tmp"

rm -f "$stamp"
if [ -d "$libs" ]; then
  mv "$libs" "$base/libs.old.$$"
fi
mv "$tmp" "$libs"
rm -rf "$base/libs.old.$$"
want_stamp >"$stamp"
trap - EXIT
echo "fetch.sh: $(find "$libs" -name '*.jar' | wc -l) jars ready" >&2
echo "$libs"
