#!/bin/sh
# Builds the vism Debian package (amd64) with dpkg-deb.
#
#   packaging/build-deb.sh [--from DIR] [--output DIR] [--fast]
#
#   --from DIR    package this build output (a `dotnet build`/`publish` folder of src/Framework/Host,
#                 with its plugins/) instead of running `dotnet publish`
#   --output DIR  where to write vism_<version>_amd64.deb (default: artifacts/)
#   --fast        gzip -1 instead of xz (for tests)
#
# Layout:
#   /usr/lib/vism/app/        vism (framework-dependent build, linux-x64 native assets only) and plugins/
#   /usr/lib/vism/dotnet/     the .NET runtime it runs on, copied from the building machine's SDK:
#                             the package depends on no external .NET package (Debian ships none),
#                             so it installs into a clean Debian root; a security update of .NET
#                             means rebuilding the package.
#   /usr/bin/vism             runs the app on that runtime (exec, so systemd sees vism as the main PID)
#   /etc/vism/vism.toml       default config (a conffile), from config/default.toml
#   /lib/systemd/system/      vism.service, vism@.service
#   /usr/share/doc/vism/      README.md, example configs and the socket-activation example
# postinst creates the `vism` system user and group; the unit runs as them.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
from=""
output="$here/artifacts"
compress="-Zxz"
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from=$2; shift 2 ;;
        --output) output=$2; shift 2 ;;
        --fast) compress="-Zgzip -z1"; shift ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

version=$(sed -n 's|.*<Version>\(.*\)</Version>.*|\1|p' "$here/Directory.Build.props" | head -n1)
stage=$(mktemp -d /tmp/vism-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
root="$stage/vism_${version}_amd64"
mkdir -p "$root/DEBIAN" "$root/usr/lib/vism" "$root/usr/bin" "$root/etc/vism" "$root/lib/systemd/system" \
         "$root/usr/share/doc/vism/examples"

if [ -z "$from" ]; then
    from="$stage/publish"
    dotnet publish "$here/src/Framework/Host/Vism.Host.csproj" -c Release -nologo -v q -o "$from"
fi
[ -f "$from/vism.dll" ] && [ -d "$from/plugins" ] || { echo "build-deb.sh: $from holds no vism build (vism.dll, plugins/)" >&2; exit 1; }
mkdir -p "$root/usr/lib/vism/app"
# The app, without debug symbols, test-only files or other platforms' native libraries.
(cd "$from" && find . -type f ! -name '*.pdb' ! -path './runtimes/*' ! -path './plugins/*/runtimes/*' -print) | while read -r f; do
    mkdir -p "$root/usr/lib/vism/app/$(dirname "$f")"
    cp "$from/$f" "$root/usr/lib/vism/app/$f"
done
for native in $(cd "$from" && find . -path '*/runtimes/linux-x64/*' -type f); do
    mkdir -p "$root/usr/lib/vism/app/$(dirname "$native")"
    cp "$from/$native" "$root/usr/lib/vism/app/$native"
done

# The .NET runtime (Microsoft.NETCore.App) the app targets, from this machine's dotnet.
dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
major=$(sed -n 's|.*"version": "\([0-9]*\)\..*|\1|p' "$from/vism.runtimeconfig.json" | head -n1)
runtime=$(ls -d "$dotnet_root/shared/Microsoft.NETCore.App/$major."* | sort -V | tail -n1)
fxr=$(ls -d "$dotnet_root/host/fxr/"* | sort -V | tail -n1)
mkdir -p "$root/usr/lib/vism/dotnet/shared/Microsoft.NETCore.App" "$root/usr/lib/vism/dotnet/host/fxr"
cp -r "$runtime" "$root/usr/lib/vism/dotnet/shared/Microsoft.NETCore.App/"
cp -r "$fxr" "$root/usr/lib/vism/dotnet/host/fxr/"
cp "$dotnet_root/dotnet" "$root/usr/lib/vism/dotnet/"
for f in LICENSE.txt ThirdPartyNotices.txt; do [ -f "$dotnet_root/$f" ] && cp "$dotnet_root/$f" "$root/usr/share/doc/vism/dotnet-$f"; done

cat > "$root/usr/bin/vism" <<'SH'
#!/bin/sh
# vism on the .NET runtime shipped with the package.
DOTNET_ROOT=/usr/lib/vism/dotnet
export DOTNET_ROOT
exec /usr/lib/vism/app/vism "$@"
SH
chmod 0755 "$root/usr/bin/vism" "$root/usr/lib/vism/app/vism"

cp "$here/config/default.toml" "$root/etc/vism/vism.toml"
cp "$here/packaging/systemd/vism.service" "$here/packaging/systemd/vism@.service" "$root/lib/systemd/system/"
cp "$here/packaging/systemd/vism-ism0.socket" "$here"/config/*.toml "$root/usr/share/doc/vism/examples/"
cp "$here/README.md" "$root/usr/share/doc/vism/"

size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CTL
Package: vism
Version: $version
Architecture: amd64
Maintainer: vism <vism@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), libstdc++6, libgcc-s1, zlib1g, libssl3, passwd
Section: misc
Priority: optional
Homepage: https://github.com/vism/vism
Description: virtio-ism device host (shared-memory regions between VMs)
 vism serves virtio-ism devices to QEMU (vhost-user) and other VMMs (mmio socket) from one
 host process: VMs given devices of one host share memory regions by token. Includes the
 vhost-user, mmio, file, hugetlb, vq and irq plugins, systemd units and the .NET runtime.
CTL
echo /etc/vism/vism.toml > "$root/DEBIAN/conffiles"

cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd vism >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/vism --no-create-home --shell /usr/sbin/nologin \
            --comment "vism virtio-ism host" vism
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        # An upgrade restarts a running host (devices reset, VMs reconnect); a fresh install does not start it.
        if [ -n "${2:-}" ] && systemctl is-active --quiet vism.service; then systemctl restart vism.service || true; fi
    fi
fi
exit 0
SH
cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop vism.service 'vism@*.service' >/dev/null 2>&1 || true
fi
exit 0
SH
cat > "$root/DEBIAN/postrm" <<'SH'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf /var/lib/vism
    if getent passwd vism >/dev/null; then userdel vism >/dev/null 2>&1 || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || true; fi
exit 0
SH
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$output"
# shellcheck disable=SC2086
dpkg-deb --root-owner-group $compress --build "$root" "$output/vism_${version}_amd64.deb" >/dev/null
echo "$output/vism_${version}_amd64.deb"
