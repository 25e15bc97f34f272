#!/usr/bin/env bash
# Installs, upgrades and erases a redis-ws-bridge .rpm with rpm itself in a throwaway copy of
# this machine (an overlay of / in a private mount namespace), checking what its scriptlets
# and file flags do; the machine itself is not touched. Needs root (mount, chroot) and rpm.
# On a Debian machine the RHEL package names it requires are unknown to rpm's database, so
# it is installed with --nodeps; the scriptlets run as they would on RHEL.
#
#   packaging/check-rpm-install.sh target/rpm/redis-ws-bridge-0.1.0-1.x86_64.rpm
#
# Prints one line per check; exits non-zero at the first that fails.
set -euo pipefail

if [ "${1:-}" = "--inside" ]; then
  # Runs in the new mount namespace: build the overlay root and run the checks in it.
  . "$(dirname "$0")/overlay.sh"
  status=0
  overlay_checks "$0" "$2" package.rpm || status=$?
  exit "$status"
fi

if [ "${1:-}" = "--checks" ]; then
  package=$2
  name=redis-ws-bridge
  check() { echo "ok: $*"; }
  fail() { echo "FAILED: $*" >&2; exit 1; }
  mode() { stat -c '%U:%G %a' "$1"; }

  getent passwd $name >/dev/null && fail "user $name already exists on this machine"
  rpm -i --nodeps "$package" || fail "rpm -i"
  check "rpm -i"
  /usr/bin/$name --version >/dev/null || fail "$name --version"
  getent passwd $name | grep -q ':/nonexistent:/sbin/nologin$' || fail "system user: $(getent passwd $name)"
  [ ! -e /nonexistent ] || fail "a home directory was made"
  uid=$(id -u $name)
  [ "$uid" -lt 1000 ] || fail "uid $uid is not a system uid"
  check "system user $name (uid $uid, no login, no home) made by %pre"
  [ "$(mode /etc/$name/bridge.yaml)" = "root:$name 640" ] || fail "bridge.yaml: $(mode /etc/$name/bridge.yaml)"
  [ "$(mode /etc/$name/environment)" = "root:root 600" ] || fail "environment: $(mode /etc/$name/environment)"
  [ "$(mode /etc/$name/jwt.secret)" = "root:$name 640" ] || fail "jwt.secret: $(mode /etc/$name/jwt.secret)"
  [ "$(wc -c < /etc/$name/jwt.secret)" -ge 64 ] || fail "jwt.secret is too short"
  check "config files and the generated JWT secret, readable by the daemon's group only"
  runuser -u $name -- /usr/bin/$name check --config /etc/$name/bridge.yaml >/dev/null 2>&1 || fail "check of the installed bridge.yaml"
  check "the installed bridge.yaml is valid, read as user $name"
  [ "$(readlink -f /etc/systemd/system/multi-user.target.wants/$name.service)" = "$(readlink -f /usr/lib/systemd/system/$name.service)" ] || fail "unit not enabled"
  check "unit enabled (multi-user.target.wants) without a running systemd"
  man -w $name >/dev/null 2>&1 && man -w $name.yaml >/dev/null 2>&1 || fail "manual pages"
  check "man $name, man $name.yaml"

  # An upgrade (the same package again) keeps an edited config file and the secret.
  echo "# edited by the administrator" >> /etc/$name/bridge.yaml
  secret=$(cat /etc/$name/jwt.secret)
  rpm -U --replacepkgs --nodeps "$package" || fail "rpm -U"
  grep -q "edited by the administrator" /etc/$name/bridge.yaml || fail "the upgrade replaced an edited config file"
  [ "$(cat /etc/$name/jwt.secret)" = "$secret" ] || fail "the upgrade replaced the JWT secret"
  check "upgrade keeps the edited bridge.yaml and the secret"

  rpm -e $name || fail "rpm -e"
  [ ! -e /usr/bin/$name ] || fail "erase left /usr/bin/$name"
  [ ! -e /etc/systemd/system/multi-user.target.wants/$name.service ] || fail "erase left the unit enabled"
  grep -q "edited by the administrator" /etc/$name/bridge.yaml.rpmsave || fail "the edited bridge.yaml was not saved as .rpmsave"
  [ ! -e /etc/$name/environment ] || fail "erase left the unedited environment file"
  [ "$(cat /etc/$name/jwt.secret)" = "$secret" ] || fail "erase deleted the JWT secret"
  getent passwd $name >/dev/null || fail "erase deleted the user"
  rpm -q $name >/dev/null 2>&1 && fail "rpm still knows $name"
  check "rpm -e: binary and unit gone, edited bridge.yaml saved as .rpmsave, secret and user kept"
  exit 0
fi

package=$(realpath "${1:?usage: check-rpm-install.sh PACKAGE.rpm}")
exec unshare --mount --propagation private "$0" --inside "$package"
