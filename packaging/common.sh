# Shared by build-deb.sh and build-rpm.sh (sourced, not run): what both packages take from
# the sources and from whoever builds them.

name=redis-ws-bridge

# The daemon's release binary, built here (the product only: bench tools are other members of
# the workspace).
release_binary() {
  cargo build --release --locked --manifest-path "$1/Cargo.toml" -p "$name" >&2
  printf '%s\n' "$1/target/release/$name"
}

# The version of Cargo.toml.
package_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$1/Cargo.toml" | head -n 1
}

# "Name <address>" of whoever builds and ships the package: $PACKAGE_MAINTAINER, else
# $DEBFULLNAME <$DEBEMAIL> as Debian's tools read them. There is no default: a package must
# name someone who answers for it.
package_maintainer() {
  if [ -n "${PACKAGE_MAINTAINER:-}" ]; then
    printf '%s\n' "$PACKAGE_MAINTAINER"
  elif [ -n "${DEBEMAIL:-}" ]; then
    printf '%s <%s>\n' "${DEBFULLNAME:-$name packager}" "$DEBEMAIL"
  else
    echo "who maintains this package? Set PACKAGE_MAINTAINER='Name <address>' (or DEBEMAIL and DEBFULLNAME)" >&2
    return 1
  fi
}

# The package's long description, wrapped for both formats.
description() {
  cat <<'TEXT'
A standalone daemon that subscribes to Redis channels and patterns, routes
every message by one YAML file into topics, and delivers JSON frames to the
WebSocket clients that subscribed and that the route's audience admits (JWT
or API keys). Runs under systemd (Type=notify, reload on SIGHUP or file
change) behind nginx, with Prometheus metrics on /metrics.
TEXT
}

# The time of the build, or $SOURCE_DATE_EPOCH for a reproducible one.
build_epoch() {
  printf '%s\n' "${SOURCE_DATE_EPOCH:-$(date +%s)}"
}

# Writes redis-ws-bridge.yaml(5) to stdout: the example routing file, which documents every
# key in its comments, as a manual page. $1: the repository, $2: the version.
routing_file_manual() {
  local root=$1 version=$2
  # Text for roff: backslashes and hyphens escaped, no line taken for a request.
  roff() { sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^[.']/\\\\\\&&/"; }
  cat <<HEAD
.TH REDIS-WS-BRIDGE.YAML 5 "" "redis-ws-bridge $version" "redis-ws-bridge manual"
.SH NAME
redis\\-ws\\-bridge.yaml \\- the routing file of redis\\-ws\\-bridge(1)
.SH SYNOPSIS
/etc/redis\\-ws\\-bridge/bridge.yaml
.SH DESCRIPTION
One YAML file tells redis\\-ws\\-bridge which Redis channels become which topics, who may
receive them and what the frames look like, and configures the server, Redis, the
WebSocket limits and authentication. \\fBredis\\-ws\\-bridge check\\fR validates a file;
the daemon reloads it when it changes and on SIGHUP.
.PP
What follows is the example file shipped with the package
(/usr/share/doc/redis\\-ws\\-bridge/examples/bridge.example.yaml): every supported key with
its default, each documented in its comments.
.SH THE FILE, KEY BY KEY
.nf
HEAD
  roff < "$root/bridge.example.yaml"
  cat <<'TAIL'
.fi
.SH SEE ALSO
redis\-ws\-bridge(1), /usr/share/doc/redis\-ws\-bridge/README.md
TAIL
}

# Writes redis-ws-bridge(1): the binary $1 renders it from its own --help definition.
command_manual() {
  "$1" man
}
