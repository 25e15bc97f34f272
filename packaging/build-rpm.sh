#!/usr/bin/env bash
# Builds the RPM for RHEL-family systems with rpmbuild (Debian's `rpm` package has it), from
# packaging/rpm/redis-ws-bridge.spec and the same files, unit and scriptlet behaviour as the
# Debian package:
#
#   packaging/build-rpm.sh                 release build, then target/rpm/redis-ws-bridge-VERSION-1.ARCH.rpm
#   packaging/build-rpm.sh --binary PATH   package this binary instead of building one
#                          --out DIR       write the .rpm into DIR
#
# The Packager is whoever builds and ships it: PACKAGE_MAINTAINER='Name <address>', or
# DEBFULLNAME and DEBEMAIL.
#
# Prints the path of the .rpm on stdout.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=packaging/common.sh
. "$root/packaging/common.sh"
maintainer=$(package_maintainer)

binary=""
out="$root/target/rpm"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "build-rpm.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

[ -n "$binary" ] || binary=$(release_binary "$root")

version=$(package_version "$root")
arch=$(uname -m)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/stage"
mkdir -p "$stage"

# RHEL's paths: units under /usr/lib/systemd, the license apart from the docs.
install -D -m 0755 "$binary" "$stage/usr/bin/$name"
strip --strip-unneeded "$stage/usr/bin/$name"
install -D -m 0644 "$root/systemd/$name.service" "$stage/usr/lib/systemd/system/$name.service"
install -D -m 0640 "$root/bridge.example.yaml" "$stage/etc/$name/bridge.yaml"
install -D -m 0600 "$root/packaging/debian/environment" "$stage/etc/$name/environment"
install -D -m 0644 "$root/packaging/debian/copyright" "$stage/usr/share/licenses/$name/copyright"
doc="$stage/usr/share/doc/$name"
install -D -m 0644 "$root/README.md" "$doc/README.md"
install -D -m 0644 "$root/bridge.example.yaml" "$doc/examples/bridge.example.yaml"
install -D -m 0644 "$root/packaging/nginx/$name.conf" "$doc/examples/nginx/$name.conf"
install -D -m 0644 "$root/packaging/prometheus/alerts.yml" "$doc/examples/prometheus/alerts.yml"
install -D -m 0644 "$root/packaging/grafana/$name.json" "$doc/examples/grafana/$name.json"
mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/man/man5"
command_manual "$binary" | gzip -9n > "$stage/usr/share/man/man1/$name.1.gz"
routing_file_manual "$root" "$version" | gzip -9n > "$stage/usr/share/man/man5/$name.yaml.5.gz"
chmod 0644 "$stage/usr/share/man/man1/$name.1.gz" "$stage/usr/share/man/man5/$name.yaml.5.gz"
description > "$work/description"

epoch=$(build_epoch)
rpmbuild -bb --quiet \
  --target "$arch" \
  --define "_topdir $work/rpmbuild" \
  --define "_rpmdir $work/rpms" \
  --define "_build_id_links none" \
  --define "pkg_version $version" \
  --define "pkg_stage $stage" \
  --define "pkg_maintainer $maintainer" \
  --define "pkg_changelog_date $(LC_ALL=C date -u -d "@$epoch" '+%a %b %d %Y')" \
  --define "source_date_epoch_from_changelog 0" \
  "$root/packaging/rpm/$name.spec" >&2

mkdir -p "$out"
rpm_file="$out/$name-$version-1.$arch.rpm"
cp "$work/rpms/$arch/$name-$version-1.$arch.rpm" "$rpm_file"
echo "$rpm_file"
