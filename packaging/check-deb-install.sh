#!/usr/bin/env bash
# Installs, upgrades, removes and purges a redis-ws-bridge .deb in a throwaway copy of this
# machine (an overlay of / in a private mount namespace), checking each step; the machine
# itself is not touched. Needs root (mount, chroot).
#
#   packaging/check-deb-install.sh target/debian/redis-ws-bridge_0.1.0_amd64.deb
#
# Prints one line per check; exits non-zero at the first that fails.
set -euo pipefail

if [ "${1:-}" = "--inside" ]; then
  # Runs in the new mount namespace: build the overlay root and run the checks in it.
  . "$(dirname "$0")/overlay.sh"
  status=0
  overlay_checks "$0" "$2" package.deb || status=$?
  exit "$status"
fi

if [ "${1:-}" = "--checks" ]; then
  deb=$2
  name=redis-ws-bridge
  check() { echo "ok: $*"; }
  fail() { echo "FAILED: $*" >&2; exit 1; }

  if dpkg -s "$name" >/dev/null 2>&1; then
    fail "$name is already installed on this machine; the checks need a machine without it"
  fi

  DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >/dev/null
  check "dpkg -i"
  [ -x /usr/bin/$name ] || fail "/usr/bin/$name missing"
  /usr/bin/$name --version >/dev/null || fail "$name --version"
  check "/usr/bin/$name runs"
  getent passwd $name | grep -q ':/nonexistent:/usr/sbin/nologin$' || fail "system user: $(getent passwd $name)"
  uid=$(id -u $name)
  [ "$uid" -lt 1000 ] || fail "uid $uid is not a system uid"
  check "system user $name (uid $uid, no login, no home)"
  [ "$(stat -c '%U:%G %a' /etc/$name/bridge.yaml)" = "root:$name 640" ] || fail "bridge.yaml: $(stat -c '%U:%G %a' /etc/$name/bridge.yaml)"
  [ "$(stat -c '%U:%G %a' /etc/$name/environment)" = "root:root 600" ] || fail "environment: $(stat -c '%U:%G %a' /etc/$name/environment)"
  [ "$(stat -c '%U:%G %a' /etc/$name/jwt.secret)" = "root:$name 640" ] || fail "jwt.secret: $(stat -c '%U:%G %a' /etc/$name/jwt.secret)"
  [ "$(wc -c < /etc/$name/jwt.secret)" -ge 64 ] || fail "jwt.secret is too short"
  check "config files and the generated JWT secret, readable by the daemon's group only"
  # The daemon reads its configuration as its own user would.
  runuser -u $name -- /usr/bin/$name check --config /etc/$name/bridge.yaml >/dev/null || fail "check of the installed bridge.yaml"
  check "the installed bridge.yaml is valid, read as user $name"
  [ "$(readlink /etc/systemd/system/multi-user.target.wants/$name.service)" = "/lib/systemd/system/$name.service" ] || fail "unit not enabled"
  check "unit enabled (multi-user.target.wants)"
  systemd-analyze verify $name.service || fail "systemd-analyze verify of the installed unit"
  check "systemd-analyze verify $name.service"

  # An upgrade (the same package again) keeps an edited conffile and the secret.
  echo "# edited by the administrator" >> /etc/$name/bridge.yaml
  secret=$(cat /etc/$name/jwt.secret)
  DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb" >/dev/null
  grep -q "edited by the administrator" /etc/$name/bridge.yaml || fail "the upgrade replaced an edited conffile"
  [ "$(cat /etc/$name/jwt.secret)" = "$secret" ] || fail "the upgrade replaced the JWT secret"
  check "upgrade keeps the edited bridge.yaml and the secret"

  dpkg -r $name >/dev/null
  [ ! -e /usr/bin/$name ] || fail "remove left /usr/bin/$name"
  [ -e /etc/$name/bridge.yaml ] || fail "remove deleted the conffile"
  getent passwd $name >/dev/null || fail "remove deleted the user"
  check "dpkg -r: binary gone, configuration and user kept"

  dpkg -P $name >/dev/null 2>&1
  [ ! -e /etc/$name ] || fail "purge left /etc/$name: $(ls -A /etc/$name)"
  ! getent passwd $name >/dev/null || fail "purge left the user"
  ! getent group $name >/dev/null || fail "purge left the group"
  [ ! -e /etc/systemd/system/multi-user.target.wants/$name.service ] || fail "purge left the enablement link"
  ! ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -q $name || fail "purge left deb-systemd-helper state"
  dpkg -s $name >/dev/null 2>&1 && fail "dpkg still knows $name"
  check "dpkg -P: configuration, secret, user, group and unit state gone"
  exit 0
fi

deb=$(realpath "${1:?usage: check-deb-install.sh PACKAGE.deb}")
exec unshare --mount --propagation private "$0" --inside "$deb"
