#!/usr/bin/env bash
# The whole test suite from a fresh clone: Rust unit tests, Python unit tests, integration tests
# (real launcher, shards and router). What CI runs (.ci/run).
#
#   scripts/test.sh            # everything
#
# Slow installs are cached outside the repository, keyed by what they depend on, so a second run
# only rebuilds what changed:
#   ~/.cache/ferrite/venv-<hash>    Python deps pinned in scripts/requirements-*.txt
#   ~/.cache/ferrite/target-<hash>  cargo's build directory, per Cargo.lock
# FERRITE_CACHE_DIR moves that root, PYTHON picks the interpreter (3.11 or newer).
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
cache_root=${FERRITE_CACHE_DIR:-$HOME/.cache/ferrite}
python=${PYTHON:-python3}
# Keep this many cached virtualenvs / target dirs per kind; older ones are removed.
keep_cached=2

step() { printf '\n==> %s\n' "$*"; }

short_hash() { sha256sum | cut -c1-16; }

prune_old() { # prune_old PREFIX CURRENT: drop all but the newest $keep_cached PREFIX-<hash> dirs
    local prefix=$1 current=$2
    # shellcheck disable=SC2012 # names are <prefix>-<hex>: no odd characters
    { ls -1dt "$cache_root/$prefix"-[0-9a-f]* 2>/dev/null || true; } \
        | { grep -E "/$prefix-[0-9a-f]{16}$" || true; } | { grep -vx "$current" || true; } \
        | tail -n +"$keep_cached" | xargs -r rm -rf
}

ensure_venv() {
    local key venv
    key=$({ cat scripts/requirements-test.txt scripts/requirements-nodeps.txt; "$python" -VV; } | short_hash)
    venv="$cache_root/venv-$key"
    if [[ ! -f "$venv/.ferrite-complete" ]]; then
        step "creating $venv (first run with these requirements: several minutes)"
        rm -rf "$venv"
        mkdir -p "$cache_root"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -r scripts/requirements-test.txt
        "$venv/bin/python" -m pip install --quiet --no-deps -r scripts/requirements-nodeps.txt
        touch "$venv/.ferrite-complete"
        prune_old venv "$venv"
    fi
    venv_dir=$venv
}

run_pytest() { # run_pytest PATH...: pytest, where "no tests collected" (exit 5) is a failure
    local status=0
    python -m pytest "$@" || status=$?
    if [[ $status -eq 5 ]]; then
        echo "pytest collected no tests in $*" >&2
    fi
    return "$status"
}

print_machine() { # a failure names the machine: results can depend on the CPU's features
    step "machine"
    lscpu | grep -E '^(Model name|Flags):' || echo "lscpu unavailable"
    echo "cores: $(nproc)"
}

print_machine
ensure_venv
# shellcheck disable=SC1091
source "$venv_dir/bin/activate"
export CARGO_TARGET_DIR="$cache_root/target-$(short_hash < Cargo.lock)"
prune_old target "$CARGO_TARGET_DIR"

step "cargo test --workspace"
cargo test --workspace

step "building and installing ferrite into $venv_dir"
wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT
# The dev profile shares its compiled dependencies with `cargo test` above.
maturin build --profile dev --strip --out "$wheel_dir"
python -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/ferrite-*.whl
for program in ferrite-launcher ferrite-router ferrite-server ferrite-benchmark; do
    command -v "$program" >/dev/null || { echo "$program is not on PATH after install" >&2; exit 1; }
done

step "pytest tests (Python unit tests)"
run_pytest tests

step "pytest integration-tests (real processes)"
run_pytest integration-tests

step "all tests passed"
