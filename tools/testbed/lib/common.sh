# Shared helpers for the testbed scripts on level 0 (sourced, not run).
# shellcheck shell=bash  # sourced by the bash scripts tools/testbed/run and setup
TB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034 # for the scripts that source this file
REPO_ROOT=$(cd "$TB_ROOT/../.." && pwd)
# Downloads, the unpacked kernel and the cached base archives survive across clones on the
# same machine.
TB_CACHE=${VIADUCT_TESTBED_CACHE:-/var/cache/viaduct-testbed}
TB_KDIR="$TB_CACHE/kernel"

log() { printf 'testbed: %s\n' "$*" >&2; }
die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

kernel_version() {
    [ -f "$TB_KDIR/VERSION" ] || die "no kernel in $TB_KDIR: run tools/testbed/setup first"
    cat "$TB_KDIR/VERSION"
}

# scenario_meta FILE KEY: the value of a `# tb-KEY: value` header line (empty if absent).
scenario_meta() {
    sed -n "s/^# tb-$2:[[:space:]]*//p" "$1" | head -n1
}
