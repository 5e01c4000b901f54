# Shared helpers for the testbed scripts (sourced, not run).
TB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$TB_ROOT/../.." && pwd)
# Downloads and the unpacked kernel survive across clones on the same machine.
TB_CACHE=${VIADUCT_TESTBED_CACHE:-/var/cache/viaduct-testbed}

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }
