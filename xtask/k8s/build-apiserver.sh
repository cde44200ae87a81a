#!/bin/sh
# Builds kube-apiserver from Debian's `kubernetes` source package and caches the binary under
# $CACHE/<version>/kube-apiserver. Idempotent: an existing cached binary is reused.
# Usage: build-apiserver.sh [CACHE]   (default /var/cache/chokepoint-k8s)
set -eu
CACHE=${1:-/var/cache/chokepoint-k8s}
VERSION=1.20.2
OUT="$CACHE/$VERSION"
if [ -x "$OUT/kube-apiserver" ]; then
    echo "kube-apiserver $VERSION cached at $OUT"
    exit 0
fi
for cmd in go rsync make dpkg-source; do
    command -v "$cmd" >/dev/null || { echo "missing $cmd (apt-get install golang-go rsync make dpkg-dev)" >&2; exit 1; }
done
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$R2" ] || { echo "missing $R2 (apt-get install golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
WORK="$CACHE/work-$VERSION"
rm -rf "$WORK"
mkdir -p "$WORK/lists/partial" "$WORK/src"
# A private deb-src list for the same mirror and suite as the system's, without touching its apt sources.
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "deb-src $MIRROR bookworm main" > "$WORK/sources.list"
APT="-o Dir::Etc::SourceList=$WORK/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$WORK/lists"
# shellcheck disable=SC2086
apt-get $APT update
cd "$WORK/src"
# shellcheck disable=SC2086
apt-get $APT source --download-only kubernetes
dpkg-source --no-check -x kubernetes_*.dsc tree
cd tree
# The vendored reflect2 1.0.1 faults under Go >= 1.18 (json-iterator map encoding); use Debian's 1.0.2.
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
cp "$R2"/*.go vendor/github.com/modern-go/reflect2/
for s in "$R2"/*.s; do [ -e "$s" ] && cp "$s" vendor/github.com/modern-go/reflect2/; done
export GOCACHE="$WORK/gocache"
make WHAT="cmd/kube-apiserver" KUBE_BUILD_PLATFORMS=linux/amd64
mkdir -p "$OUT"
cp _output/local/bin/linux/amd64/kube-apiserver "$OUT/kube-apiserver.tmp"
mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
cd "$CACHE"
rm -rf "$WORK"
echo "kube-apiserver $VERSION built at $OUT"
