#!/usr/bin/env bash
# The plugin SDK as a third-party author gets it, end to end:
#   1. pack every Vism.* package and the Vism.Templates template package into a local feed;
#   2. install the template from that feed into a private template hive in a temporary folder;
#   3. for each kind (memory, events, transport): `dotnet new vism-plugin --kind K`, build it with
#      a temporary NuGet.config (the local feed + the normal sources, a private packages folder)
#      against the packages only, check nothing in it points into this repository, run its xunit
#      conformance test, publish the plugin, and run `vism matrix --plugins` with it.
# Prints one line per step and ends with "sdk-check: all N kind(s) passed"; exits non-zero on the
# first failure (its output is shown). tests/Vism.Sdk.Tests runs it as part of the test suite.
#
# Usage: scripts/sdk-check.sh [--no-build] [--feed DIR] [--kinds "memory events transport"] [--keep]
#   --no-build  pack what `dotnet build Framework.sln -c Release` already built (the test suite's case)
#   --feed DIR  the local feed (default artifacts/packages; its Vism.* packages are replaced)
#   --keep      keep the temporary folder (printed) for inspection
# Environment: VISM_SDK_WORK (temporary folder to use instead of mktemp).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FEED=$ROOT/artifacts/packages
KINDS="memory events transport"
NO_BUILD=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) NO_BUILD=--no-build ;;
    --feed) FEED=$(realpath -m "$2"); shift ;;
    --kinds) KINDS=$2; shift ;;
    --keep) KEEP=1 ;;
    *) echo "sdk-check: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

WORK=${VISM_SDK_WORK:-$(mktemp -d /tmp/vism-sdk-XXXXXX)}
mkdir -p "$WORK"
cleanup() {
  if [ "$KEEP" = 1 ]; then echo "sdk-check: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { echo "sdk-check: $*"; }
fail() { echo "sdk-check: FAILED: $*" >&2; exit 1; }
# Runs a command quietly; on failure prints its output and fails.
run() {
  local what=$1; shift
  local log="$WORK/log.txt"
  local t0=$SECONDS
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    fail "$what"
  fi
  say "$what ($((SECONDS - t0))s)"
}

# ---- 1. pack ----
mkdir -p "$FEED"
rm -f "$FEED"/Vism.*.nupkg "$FEED"/Vism.*.snupkg
run "packed Framework.sln's packages into $FEED" dotnet pack Framework.sln -c Release -nologo -v q $NO_BUILD -o "$FEED"
run "packed the template package" dotnet pack templates/Vism.Templates/Vism.Templates.csproj -c Release -nologo -v q -o "$FEED"
abstractions=$(ls "$FEED"/Vism.Abstractions.*.nupkg 2>/dev/null | head -1)
[ -n "$abstractions" ] || fail "no Vism.Abstractions package in $FEED"
VERSION=$(basename "$abstractions" .nupkg); VERSION=${VERSION#Vism.Abstractions.}
contract=$(sed -n 's/.*public const int Version = \([0-9]*\);.*/\1/p' src/Framework/Abstractions/Plugins.cs)
[ "${VERSION%%.*}" = "$contract" ] || fail "package version $VERSION does not start with the contract version $contract"
for id in Vism.Abstractions Vism.PluginKit Vism.Driver Vism.Conformance Vism.Core Vism.Native Vism.Mmio Vism.VhostUser \
          Vism.Memory.File Vism.Events.Vq Vism.Templates; do
  pkg="$FEED/$id.$VERSION.nupkg"
  [ -f "$pkg" ] || fail "$id $VERSION was not packed"
  listing=$(unzip -l "$pkg")
  echo "$listing" | grep -q ' README.md$' || fail "$id has no README.md"
  if [ "$id" != Vism.Templates ]; then
    echo "$listing" | grep -q "lib/net10.0/$id.xml" || fail "$id has no XML documentation"
    [ -f "$FEED/$id.$VERSION.snupkg" ] || fail "$id has no symbol package"
    unzip -p "$pkg" "$id.nuspec" | grep -q '<repository type="git" url="[^"]*" [^>]*commit="[0-9a-f]\{40\}"' \
      || fail "$id's nuspec names no repository commit (SourceLink)"
  fi
done
say "packages $VERSION: READMEs, XML docs, symbols, repository commit present"

# ---- 2. a temporary NuGet.config: the local feed + the normal sources; a private packages folder
#         (so a re-packed 1.0.0 is never served stale from a cache), the user's as a fallback ----
cat > "$WORK/NuGet.config" <<EOF
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <config>
    <add key="globalPackagesFolder" value="$WORK/packages" />
  </config>
  <packageSources>
    <clear />
    <add key="vism-local" value="$FEED" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" protocolVersion="3" />
    <add key="offline" value="/opt/nuget/packages" />
  </packageSources>
  <fallbackPackageFolders>
    <add key="user" value="$HOME/.nuget/packages" />
  </fallbackPackageFolders>
</configuration>
EOF
[ -d /opt/nuget/packages ] || sed -i '/key="offline"/d' "$WORK/NuGet.config"
# Nothing of this repository's build may leak in: no Directory.Build.* or global.json above $WORK.
for f in Directory.Build.props Directory.Build.targets Directory.Packages.props global.json; do
  [ -e "$WORK/../$f" ] && fail "$WORK/../$f would be imported by the generated projects"
done

HIVE="$WORK/hive"
run "installed Vism.Templates $VERSION from the local feed" \
  dotnet new install "$FEED/Vism.Templates.$VERSION.nupkg" --debug:custom-hive "$HIVE"

VISM="$ROOT/src/Framework/Host/bin/Release/net10.0/vism"
if [ ! -x "$VISM" ]; then  # packing Framework.sln (without --no-build) built it
  run "built vism" dotnet build src/Framework/Host -c Release -nologo -v q
fi

# ---- 3. each kind: create, build against the packages only, test, publish, `vism matrix` ----
# The kinds are created first and built and tested together (one restore, one build, one test run).
kinds=($KINDS)
declare -A NAME KINDNAME
for kind in "${kinds[@]}"; do
  Kind=$(echo "${kind:0:1}" | tr a-z A-Z)${kind:1}
  name="Acme.${Kind}Check"
  NAME[$kind]=$name
  KINDNAME[$kind]=$(echo "$name" | tr A-Z. a-z-)   # the template's default --kind-name
  dir="$WORK/generated/$kind"
  run "[$kind] dotnet new vism-plugin --kind $kind -n $name" \
    dotnet new vism-plugin --kind "$kind" -n "$name" -o "$dir" --debug:custom-hive "$HIVE"
  [ -f "$dir/$name/$name.csproj" ] && [ -f "$dir/$name.Tests/$name.Tests.csproj" ] && [ -f "$dir/$name/README.md" ] \
    && [ -f "$dir/$name/MyOptions.cs" ] || fail "[$kind] the template did not create $name/{$name.csproj,MyOptions.cs,README.md} and $name.Tests/"
  grep -q "\"${KINDNAME[$kind]}\"" "$dir/$name/MyPlugin.cs" || fail "[$kind] the kind name is not ${KINDNAME[$kind]}"
  if grep -rIl "$ROOT" "$dir"; then fail "[$kind] generated files point into the repository"; fi
  grep -q '<ProjectReference' "$dir/$name/$name.csproj" && fail "[$kind] the plugin project has a project reference"
done
if [[ " ${kinds[*]} " == *" transport "* ]]; then
  grep -q 'class MyConnector : IDriverConnector' "$WORK/generated/transport/${NAME[transport]}/MyConnector.cs" \
    || fail "[transport] no IDriverConnector skeleton"
fi
cp "$WORK/NuGet.config" "$WORK/generated/NuGet.config"   # the local feed (in artifacts/) + the normal sources
(cd "$WORK/generated" && dotnet new sln -n Generated >/dev/null && \
  for kind in "${kinds[@]}"; do dotnet sln Generated.slnx add "$kind/${NAME[$kind]}" "$kind/${NAME[$kind]}.Tests" >/dev/null || exit 1; done) \
  || fail "cannot make a solution of the generated projects"

run "built the generated plugins and their tests against the packages" \
  dotnet build "$WORK/generated/Generated.slnx" -c Release -nologo -v q
for kind in "${kinds[@]}"; do
  name=${NAME[$kind]}
  assets="$WORK/generated/$kind/$name/obj/project.assets.json"
  grep -q "\"Vism.Abstractions/$VERSION\"" "$assets" || fail "[$kind] $name did not restore Vism.Abstractions $VERSION as a package"
  grep -q '"type": "project"' "$assets" && fail "[$kind] $name restored a project reference"
  grep -Eq "\"$ROOT/(src|plugins|tests)" "$assets" && fail "[$kind] $name's restore used this repository's projects"
done
say "restores: Vism.* $VERSION from the local feed, no project of this repository"

run "dotnet test of the generated test projects (the conformance suite through DirectComposer)" \
  dotnet test "$WORK/generated/Generated.slnx" -c Release --no-build -nologo
passed=$(grep -Ec '^Passed!' "$WORK/log.txt" || true)
[ "$passed" = "${#kinds[@]}" ] || { cat "$WORK/log.txt"; fail "$passed of ${#kinds[@]} generated test projects passed"; }
grep -E '^Passed!' "$WORK/log.txt" | sed 's/^/sdk-check:   /'

count=0
for kind in "${kinds[@]}"; do
  name=${NAME[$kind]}
  kindName=${KINDNAME[$kind]}
  plugins="$WORK/plugins-$kind"
  run "[$kind] published $name" \
    dotnet publish "$WORK/generated/$kind/$name/$name.csproj" -c Release --no-build -nologo -v q -o "$plugins/$name"
  for host in Vism.Abstractions Vism.Driver Vism.PluginKit runtimes; do
    { [ -e "$plugins/$name/$host.dll" ] || [ -e "$plugins/$name/$host" ]; } && fail "[$kind] the published plugin ships $host(.dll), which the host provides"
  done
  case "$kind" in
    memory) select=(--memory "$kindName" --transport vhost-user --transport mmio --events vq) ;;
    events) select=(--events "$kindName" --transport vhost-user --transport mmio --memory file) ;;
    transport) select=(--transport "$kindName" --memory file --events vq --events none) ;;
  esac
  run "[$kind] vism matrix --plugins DIR ${select[*]} --fail-on-skip" \
    "$VISM" matrix --plugins "$plugins" "${select[@]}" --fail-on-skip
  grep -E '^[0-9]+ combination' "$WORK/log.txt" | sed "s/^/sdk-check: [$kind]   /"
  grep -Eq ' [1-9][0-9]* passed, 0 failed, 0 skipped' "$WORK/log.txt" || fail "[$kind] vism matrix passed nothing"
  count=$((count + 1))
done
say "all $count kind(s) passed"
