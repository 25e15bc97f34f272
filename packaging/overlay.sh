# Shared by check-deb-install.sh and check-rpm-install.sh (sourced, not run): a throwaway
# copy of this machine to install a package into.

# Runs `SCRIPT --checks /tmp/COPY` chrooted in an overlay of / (writes go to a temporary
# upper layer, thrown away after), with PACKAGE copied in as /tmp/COPY. Call it in a private
# mount namespace (`unshare --mount --propagation private`); returns the checks' status.
overlay_checks() {
  local script=$1 package=$2 copy=$3
  local work status=0
  work=$(mktemp -d)
  mkdir -p "$work/upper" "$work/work" "$work/root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
  mount --rbind /dev "$work/root/dev"
  mount -t proc proc "$work/root/proc"
  # No /run/systemd/system: no systemd is running in there, as in an image build.
  mount -t tmpfs tmpfs "$work/root/run"
  cp "$package" "$work/root/tmp/$copy"
  cp "$script" "$work/root/tmp/checks.sh"
  chroot "$work/root" /bin/bash /tmp/checks.sh --checks "/tmp/$copy" || status=$?
  umount -R "$work/root" 2>/dev/null || umount -l "$work/root"
  rm -rf "$work"
  return "$status"
}
