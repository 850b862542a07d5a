#!/usr/bin/env bash
# The newcomer's demo: builds vism (Release) with its plugins and runs `vism demo` on a config
# (default config/default.toml): the config's devices start through their real transports and two
# built-in peers ALLOC, ATTACH, write, notify, receive the event, read and DETACH, step by step.
# No VMM is needed. Run as root on Debian 12 with the .NET 10 SDK; configs using hugetlb memory get
# huge pages reserved here (VISM_HUGEPAGES, default 256 x 2 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-config/default.toml}
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if grep -q '^kind *= *"hugetlb"' "$CONFIG" && [ "$(id -u)" = 0 ]; then
  want=${VISM_HUGEPAGES:-256}
  [ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$want" ] || echo "$want" > /proc/sys/vm/nr_hugepages
fi
echo "demo.sh: building vism (Release)..."
dotnet build src/Framework/Host/Vism.Host.csproj -c Release -nologo -v quiet -clp:ErrorsOnly
exec dotnet src/Framework/Host/bin/Release/net10.0/vism.dll demo "$CONFIG"
