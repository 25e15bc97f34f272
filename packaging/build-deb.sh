#!/usr/bin/env bash
# Builds the Debian package with dpkg-deb alone (no debhelper, no cargo-deb to install):
#
#   packaging/build-deb.sh                 release build, then target/debian/redis-ws-bridge_VERSION_ARCH.deb
#   packaging/build-deb.sh --binary PATH   package this binary instead of building one
#                          --out DIR       write the .deb into DIR
#                          --compression gzip|xz|zstd   (default xz; the tests use gzip for speed)
#
# The Maintainer is whoever builds and ships the package: PACKAGE_MAINTAINER='Name <address>',
# or DEBFULLNAME and DEBEMAIL as Debian's tools read them.
#
# Prints the path of the .deb on stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=packaging/common.sh
. "$root/packaging/common.sh"
maintainer=$(package_maintainer)

binary=""
out="$root/target/debian"
compression=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compression) compression=$2; shift 2 ;;
    *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[ -n "$binary" ] || binary=$(release_binary "$root")

version=$(package_version "$root")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$binary" "$stage/usr/bin/$name"
strip --strip-unneeded "$stage/usr/bin/$name"
install -D -m 0644 "$root/systemd/$name.service" "$stage/lib/systemd/system/$name.service"
install -D -m 0644 "$root/bridge.example.yaml" "$stage/etc/$name/bridge.yaml"
install -D -m 0600 "$root/packaging/debian/environment" "$stage/etc/$name/environment"
doc="$stage/usr/share/doc/$name"
install -D -m 0644 "$root/README.md" "$doc/README.md"
install -D -m 0644 "$root/packaging/debian/copyright" "$doc/copyright"
install -D -m 0644 "$root/bridge.example.yaml" "$doc/examples/bridge.example.yaml"
install -D -m 0644 "$root/packaging/nginx/$name.conf" "$doc/examples/nginx/$name.conf"
install -D -m 0644 "$root/packaging/prometheus/alerts.yml" "$doc/examples/prometheus/alerts.yml"
install -D -m 0644 "$root/packaging/grafana/$name.json" "$doc/examples/grafana/$name.json"
# Deliberate departures from Debian's defaults, each said why in the file.
install -D -m 0644 "$root/packaging/debian/lintian-overrides" "$stage/usr/share/lintian/overrides/$name"
# A native package's changelog, and the two manual pages, compressed as Debian wants them.
mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/man/man5"
epoch=$(build_epoch)
{
  printf '%s (%s) unstable; urgency=medium\n\n' "$name" "$version"
  printf '  * Version %s, built from the redis-ws-bridge sources.\n\n' "$version"
  printf ' -- %s  %s\n' "$maintainer" "$(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n > "$doc/changelog.gz"
command_manual "$binary" | gzip -9n > "$stage/usr/share/man/man1/$name.1.gz"
routing_file_manual "$root" "$version" | gzip -9n > "$stage/usr/share/man/man5/$name.yaml.5.gz"
chmod 0644 "$doc/changelog.gz" "$stage/usr/share/man/man1/$name.1.gz" "$stage/usr/share/man/man5/$name.yaml.5.gz"

# The binary needs the glibc version of the newest symbol it links, and libgcc_s (unwinding).
glibc=$(objdump -T "$stage/usr/bin/$name" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
if [ -z "$glibc" ]; then
  echo "build-deb.sh: cannot tell which glibc $binary needs" >&2
  exit 1
fi

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: $name
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: libc6 (>= $glibc), libgcc-s1, adduser
Section: net
Priority: optional
Description: Redis pub/sub to WebSocket bridge
$(description | sed 's/^/ /')
CONTROL
printf '/etc/%s/bridge.yaml\n/etc/%s/environment\n' "$name" "$name" > "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "$root/packaging/debian/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >&2
echo "$deb"
