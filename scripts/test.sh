#!/usr/bin/env bash
# The whole vism test suite, from a fresh Debian 12 machine with the .NET 10 SDK (run as root):
#   1. prepares the machine: huge pages, the QEMU 11.1 root (scripts/setup-qemu.sh);
#   2. builds everything in Release (Framework.sln);
#   3. runs `dotnet test` on Framework.sln with one trx file per test project;
#   4. prints one line "N passed, N failed" (then "(N skipped)") added up from the trx files.
# Exits non-zero on a build error, any failed test, or a test project that produced no results.
# Environment: VISM_HUGEPAGES (2 MiB pages to reserve, default 512), VISM_SKIP_QEMU=1 (do not
# prepare QEMU; its tests then skip), VISM_TEST_RESULTS (trx folder, default artifacts/test-results).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=${VISM_TEST_RESULTS:-$ROOT/artifacts/test-results}
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

say() { echo "test.sh: $*"; }

# --- 1. the machine -------------------------------------------------------------------------
if [ "$(id -u)" = 0 ]; then
  want=${VISM_HUGEPAGES:-512}
  have=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
  if [ "$have" -lt "$want" ]; then
    echo "$want" > /proc/sys/vm/nr_hugepages || say "warning: cannot reserve huge pages"
  fi
  say "huge pages: $(cat /proc/sys/vm/nr_hugepages) reserved, $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) free"
  if [ "${VISM_SKIP_QEMU:-0}" != 1 ]; then
    if ! bash scripts/setup-qemu.sh; then
      say "warning: scripts/setup-qemu.sh failed; the QEMU end-to-end tests will be skipped"
    fi
  fi
else
  say "not root: huge pages and QEMU are not prepared; tests needing them are skipped"
fi

# --- 2. build -------------------------------------------------------------------------------
say "building Framework.sln (Release)"
if ! dotnet build Framework.sln -c Release -nologo -v minimal; then
  say "build failed"
  echo "0 passed, 1 failed, 0 skipped"
  exit 1
fi

# --- 3. test --------------------------------------------------------------------------------
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
say "running the tests (results in $RESULTS)"
# The end-to-end tests write what each guest saw here; it is printed after the run.
export VISM_E2E_LOG="$RESULTS/e2e-guests.log"
# One test project at a time (-m:1): some tests measure machine-wide things (free huge pages)
# or need the CPU (QEMU under TCG), which test projects running side by side would disturb.
dotnet test Framework.sln -c Release --no-build -nologo -m:1 -p:VismTrxDirectory="$RESULTS" \
  --blame-hang-timeout 10m
test_rc=$?

if [ -s "$VISM_E2E_LOG" ]; then
  echo "=== what the QEMU guests saw (tests/Vism.E2E.Tests; also in $VISM_E2E_LOG) ==="
  cat "$VISM_E2E_LOG"
  echo "=== end of the guests' output ==="
fi

# --- 4. add up ------------------------------------------------------------------------------
passed=0 failed=0 skipped=0 files=0
for trx in "$RESULTS"/*.trx; do
  [ -e "$trx" ] || continue
  files=$((files + 1))
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -1)
  get() { echo "$counters" | sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p"; }
  total=$(get total); p=$(get passed); f=$(get failed); e=$(get error); t=$(get timeout); a=$(get aborted)
  bad=$(( ${f:-0} + ${e:-0} + ${t:-0} + ${a:-0} ))
  passed=$((passed + ${p:-0}))
  failed=$((failed + bad))
  # Skipped tests are counted in total but neither passed nor failed.
  s=$(( ${total:-0} - ${p:-0} - bad ))
  [ "$s" -gt 0 ] && skipped=$((skipped + s))
done
projects=$(dotnet sln Framework.sln list | grep -c 'Tests\.csproj$' || true)
if [ "$files" -lt "$projects" ]; then
  say "$((projects - files)) of $projects test project(s) produced no results (crashed or hung)"
  failed=$((failed + projects - files))
fi
# Name every test that did not pass, with the first lines of its message, right above the
# summary: a CI log that keeps only its tail still says which test failed and why.
if [ "$failed" -gt 0 ]; then
  echo "=== tests that did not pass ==="
  python3 scripts/trx-failures.py "$RESULTS"/*.trx || say "warning: could not list the failed tests"
fi
echo "$passed passed, $failed failed"
echo "($skipped skipped)"
if [ "$failed" -gt 0 ] || [ "$test_rc" -ne 0 ] || [ "$files" -eq 0 ]; then
  exit 1
fi
exit 0
