#!/usr/bin/env bash
# Runs vism's fuzz targets (fuzz/Vism.Fuzz, docs/fuzzing.md) under AFL++ with SharpFuzz.
#   scripts/fuzz.sh TARGET|all SECONDS
# Targets: vhost-user, vhost-user-session, mmio, control, splitqueue, config. For each target it prints one line
#   fuzz: TARGET: Ns, N execs (N/s), N edges, N paths, N crashes, N hangs
# and copies any crash or hang input to artifacts/fuzz/findings/TARGET/ (replay one with
# `dotnet <bin>/Vism.Fuzz.dll TARGET FILE`). Exits 1 when a target crashed or hung, 2 on a setup error.
#
# Setup (done here when missing): AFL++ (Debian package afl++; installed with apt-get when run as
# root) and the SharpFuzz.CommandLine tool (into artifacts/fuzz/tools). The fuzz project is built
# (skip with VISM_FUZZ_NO_BUILD=1 when Framework.sln was just built), its output copied to a fresh
# work folder and the assemblies under test instrumented there; the build output is never touched.
# Environment: VISM_FUZZ_WORK (work folder, default a new one under artifacts/fuzz/), VISM_FUZZ_KEEP=1
# (keep the work folder: AFL's queues and stats), VISM_FUZZ_TIMEOUT_MS (one input, default 10000),
# VISM_FUZZ_CONFIGURATION (the build used with VISM_FUZZ_NO_BUILD=1, default Release).
main() {
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGETS=(vhost-user vhost-user-session mmio control splitqueue config)
# The assemblies whose code the targets exercise (vism: the host with its config loader; Tomlyn:
# the TOML parser under it).
INSTRUMENT=(Vism.VhostUser Vism.Mmio Vism.Core Vism.Transport.Mmio Vism.Transport.VhostUser vism Tomlyn)
SHARPFUZZ_VERSION=2.3.0

say() { echo "fuzz.sh: $*" >&2; }
usage() { echo "usage: scripts/fuzz.sh TARGET|all SECONDS   (targets: ${TARGETS[*]})" >&2; exit 2; }

[ $# -eq 2 ] || usage
what=$1 seconds=$2
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] || usage
if [ "$what" = all ]; then
  run=("${TARGETS[@]}")
else
  [[ " ${TARGETS[*]} " == *" $what "* ]] || usage
  run=("$what")
fi
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

# --- tools --------------------------------------------------------------------------------------
if ! command -v afl-fuzz >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    say "installing AFL++ (Debian package afl++)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq afl++; } >&2 \
      || { say "cannot install afl++"; exit 2; }
  else
    say "afl-fuzz is missing: install the Debian package afl++"
    exit 2
  fi
fi
TOOLS=$ROOT/artifacts/fuzz/tools
if [ ! -x "$TOOLS/sharpfuzz" ]; then
  say "installing the SharpFuzz.CommandLine tool $SHARPFUZZ_VERSION into $TOOLS"
  dotnet tool install --tool-path "$TOOLS" SharpFuzz.CommandLine --version "$SHARPFUZZ_VERSION" >&2 \
    || { say "cannot install SharpFuzz.CommandLine"; exit 2; }
fi

# --- build, copy, instrument ----------------------------------------------------------------------
CONFIGURATION=${VISM_FUZZ_CONFIGURATION:-Release}
if [ "${VISM_FUZZ_NO_BUILD:-0}" != 1 ]; then
  say "building fuzz/Vism.Fuzz and the host's plugins ($CONFIGURATION)"
  dotnet build fuzz/Vism.Fuzz/Vism.Fuzz.csproj -c "$CONFIGURATION" -nologo -v q >&2 || { say "build failed"; exit 2; }
  dotnet build src/Framework/Host/Vism.Host.csproj -c "$CONFIGURATION" -nologo -v q >&2 || { say "build failed"; exit 2; }
fi
BUILD=$ROOT/fuzz/Vism.Fuzz/bin/$CONFIGURATION/net10.0
PLUGINS=$ROOT/src/Framework/Host/bin/$CONFIGURATION/net10.0/plugins
[ -f "$BUILD/Vism.Fuzz.dll" ] || { say "$BUILD/Vism.Fuzz.dll is missing (build fuzz/Vism.Fuzz)"; exit 2; }
[ -d "$PLUGINS" ] || { say "$PLUGINS is missing (build src/Framework/Host)"; exit 2; }
mkdir -p "$ROOT/artifacts/fuzz"
WORK=${VISM_FUZZ_WORK:-$(mktemp -d "$ROOT/artifacts/fuzz/run.XXXXXX")}
mkdir -p "$WORK"
cleanup() { [ "${VISM_FUZZ_KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
rm -rf "$WORK/bin"
cp -r "$BUILD" "$WORK/bin"
for asm in "${INSTRUMENT[@]}"; do
  "$TOOLS/sharpfuzz" "$WORK/bin/$asm.dll" >/dev/null || { say "cannot instrument $asm.dll"; exit 2; }
done

# --- fuzz -------------------------------------------------------------------------------------
# A shared machine: no CPU pinning, no frequency checks; no core dumps are expected (a crash is a
# managed exception that SharpFuzz reports), so AFL's core_pattern check is waived.
export AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 \
  AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_FAST_CAL=1
export VISM_FUZZ_PLUGINS=$PLUGINS
stat() { sed -n "s/^$1 *: *//p" "$2" | head -1; }
bad=0
for t in "${run[@]}"; do
  out=$WORK/out-$t
  rm -rf "$out"
  # -V: stop after this many seconds of fuzzing; the outer timeout only guards against a stuck afl-fuzz.
  timeout -k 10 $((seconds + 120)) afl-fuzz -i "$ROOT/fuzz/corpus/$t" -o "$out" -m none \
    -t "${VISM_FUZZ_TIMEOUT_MS:-10000}" -V "$seconds" -- dotnet "$WORK/bin/Vism.Fuzz.dll" "$t" >"$WORK/afl-$t.log" 2>&1
  rc=$?
  stats=$out/default/fuzzer_stats
  if [ ! -f "$stats" ]; then
    say "$t: afl-fuzz did not start (exit $rc); its output:"
    tail -25 "$WORK/afl-$t.log" >&2
    echo "fuzz: $t: did not run"
    bad=1
    continue
  fi
  crashes=$(stat saved_crashes "$stats") hangs=$(stat saved_hangs "$stats")
  echo "fuzz: $t: $(stat run_time "$stats")s, $(stat execs_done "$stats") execs ($(stat execs_per_sec "$stats")/s)," \
    "$(stat edges_found "$stats") edges, $(stat corpus_count "$stats") paths, ${crashes:-?} crashes, ${hangs:-?} hangs"
  if [ "${crashes:-1}" != 0 ] || [ "${hangs:-1}" != 0 ]; then
    bad=1
    keep=$ROOT/artifacts/fuzz/findings/$t
    mkdir -p "$keep"
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [ -e "$f" ] || continue
      kind=$(basename "$(dirname "$f")")
      cp "$f" "$keep/$kind-$(basename "$f" | tr ':,' '__')"
    done
    say "$t: findings copied to $keep; replay: dotnet $BUILD/Vism.Fuzz.dll $t $keep"
  fi
done
exit $bad
}

# The whole script is read before it runs (a long run is not disturbed by edits to this file).
main "$@"
