#!/usr/bin/env bash
# Writes the root filesystem of the test image to the tar file $1 (podman-up.sh and
# docker-up.sh import it; no registry is reachable): /bin/busybox with its applets as symlinks,
# /www with an index page, and /bin/serve, an init that serves /www over HTTP on $PORT (default
# 8080) and exits on TERM (busybox httpd as PID 1 would ignore SIGTERM).
set -euo pipefail
out=${1:?usage: test-image-rootfs.sh OUT.tar}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc,www,tmp,proc,sys,dev,data}
cp /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo 'dormant test container' >"$root/www/index.html"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
cat >"$root/bin/serve" <<'SERVE'
#!/bin/sh
# serve [DIR]: HTTP on $PORT (8080) for DIR (/www); exits at once on TERM or INT.
trap 'exit 0' TERM INT
httpd -f -p "${PORT:-8080}" -h "${1:-/www}" &
wait
SERVE
chmod 755 "$root/bin/serve"
chmod 1777 "$root/tmp"
tar -C "$root" -cf "$out" .
