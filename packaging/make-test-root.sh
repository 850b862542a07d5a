#!/bin/sh
# Creates the clean Debian root the packaging test installs vism into (once; it is cached):
#   sudo packaging/make-test-root.sh [DIR]     default DIR: /var/cache/vism/bookworm-minbase
set -eu
dir=${1:-/var/cache/vism/bookworm-minbase}
[ -x "$dir/usr/bin/dpkg" ] && { echo "$dir exists"; exit 0; }
# minbase plus the run-time dependencies of the package that minbase lacks (apt would add them).
debootstrap --variant=minbase --include=libssl3 bookworm "$dir.partial" http://deb.debian.org/debian
mv "$dir.partial" "$dir"
echo "$dir"
