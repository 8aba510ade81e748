#!/usr/bin/env bash
# Builds the image of the test hosts and loads it into the private Docker daemon, as root.
#
#   build-image.sh CACHE_DIR    # prints the image tag on its last line of stdout
#
# A host is Debian bookworm from debootstrap (minbase) with systemd as PID 1, OpenSSH
# and python3: key-only sshd (root by key too), a user `deploy` (uid 1000) whose systemd
# user manager runs from boot (lingering), /srv owned by deploy, no getty, no timers.
# Host keys are not in the image: every container makes its own at first boot.
#
# The tag is a hash of this script, so editing it builds a new image. The root file
# system is kept as CACHE_DIR/rootfs-<hash>.tar and the daemon's images under
# CACHE_DIR/docker, so a second run takes seconds. Two runs at once are safe (flock).
# The Debian mirror is the one apt already uses (TESTHOSTS_MIRROR overrides it).
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 CACHE_DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh: needs root (debootstrap, dockerd)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "build-image.sh: debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=$(realpath -m "$1")
hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
tag="turnout-testhost:$hash"
tarball="$cache/rootfs-$hash.tar"
docker_cmd=(docker --host unix:///run/turnout-testhosts/docker.sock)
packages=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,openssh-server,python3,iproute2,procps

mkdir -p "$cache"
bash "$here/dockerd.sh" start "$cache" >&2

exec 8>"$cache/build.lock"
flock -w 900 8 || { echo "build-image.sh: another build held $cache/build.lock for 15 minutes" >&2; exit 1; }

# The first bookworm mirror apt is configured with (one-line or deb822 sources).
apt_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  awk '
    /^[[:space:]]*deb[[:space:]]/ {
      for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) break
      if ($(i + 1) == "bookworm") { print $i; exit }
    }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm" && uri != "") { print uri; exit } }
    /^[[:space:]]*$/ { uri = "" }
  ' "${files[@]}" 2>/dev/null | head -n 1
}

image_present() { "${docker_cmd[@]}" image inspect "$tag" >/dev/null 2>&1; }

forget_older_builds() {
  local old
  find "$cache" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$hash.tar" -delete
  for old in $("${docker_cmd[@]}" image ls --format '{{.Repository}}:{{.Tag}}' turnout-testhost); do
    [ "$old" = "$tag" ] || "${docker_cmd[@]}" image rm "$old" >/dev/null 2>&1 || true
  done
}

configure_root() {
  local root=$1
  rm -f "$root"/etc/ssh/ssh_host_*
  : >"$root/etc/machine-id"
  cat >"$root/etc/ssh/sshd_config.d/turnout.conf" <<'CONF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UseDNS no
MaxSessions 64
MaxStartups 64:30:256
X11Forwarding no
CONF
  cat >"$root/etc/systemd/system/hostkeys-first-boot.service" <<'UNIT'
[Unit]
Description=Make this host's own SSH host keys at its first boot
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
UNIT
  mkdir -p "$root/etc/systemd/system/ssh.service.d"
  printf '[Unit]\nWants=hostkeys-first-boot.service\nAfter=hostkeys-first-boot.service\n' \
    >"$root/etc/systemd/system/ssh.service.d/hostkeys.conf"
  mkdir -p "$root/etc/systemd/journald.conf.d"
  printf '[Journal]\nStorage=persistent\nSystemMaxUse=32M\nRateLimitBurst=100000\n' \
    >"$root/etc/systemd/journald.conf.d/turnout.conf"
  chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash deploy
  chroot "$root" usermod --password '*' deploy
  mkdir -p "$root/var/lib/systemd/linger"
  : >"$root/var/lib/systemd/linger/deploy"
  chroot "$root" chown deploy:deploy /srv
  rm -f "$root"/etc/systemd/system/getty.target.wants/* "$root"/etc/systemd/system/timers.target.wants/*
  chroot "$root" systemctl mask --quiet getty.target console-getty.service systemd-pstore.service \
    e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/journal/*
}

work=
# debootstrap mounts /proc and /sys inside its tree; unmount what is left before removing it.
remove_work() {
  [ -n "$work" ] || return 0
  findmnt -rno TARGET | { grep "^$work/" || true; } | sort -r | xargs -r umount -l
  rm -rf --one-file-system "$work"
}

build_tarball() {
  local mirror
  mirror=${TESTHOSTS_MIRROR:-$(apt_mirror)}
  [ -n "$mirror" ] || { echo "build-image.sh: no bookworm mirror in /etc/apt/sources.list*; set TESTHOSTS_MIRROR" >&2; exit 1; }
  work=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap remove_work EXIT
  echo "build-image.sh: debootstrap bookworm from $mirror (about a minute)" >&2
  if ! debootstrap --variant=minbase --include="$packages" bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    echo "build-image.sh: debootstrap failed; its log ends with:" >&2
    tail -n 20 "$work/debootstrap.log" >&2
    [ -f "$work/root/debootstrap/debootstrap.log" ] && tail -n 20 "$work/root/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  configure_root "$work/root"
  tar --numeric-owner --xattrs --acls -C "$work/root" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$tarball"
}

if ! image_present; then
  [ -f "$tarball" ] || build_tarball
  "${docker_cmd[@]}" image import \
    --change 'CMD ["/sbin/init"]' --change 'ENV container=docker' \
    "$tarball" "$tag" >/dev/null
fi
forget_older_builds
echo "$tag"
