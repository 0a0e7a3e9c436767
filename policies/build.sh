#!/usr/bin/env bash
# Compiles the Rego in policies/ to the WebAssembly module the broker loads.
#
#   bash policies/build.sh           rebuild policies/compiled/policy.wasm
#   bash policies/build.sh --check   lint the Rego, rebuild into a temp dir and
#                                    fail if the committed policy.wasm is stale
#
# Run it under the toolchain (`bash .ci/toolchain exec bash policies/build.sh`)
# so the pinned OPA is the one on PATH: another OPA version compiles different
# bytes, and --check would report the committed module as stale.
#
# The committed module is compared byte for byte: `opa build -t wasm` is
# deterministic for a given OPA version and source tree (the bundle tarball
# around it is not compared, only the extracted /policy.wasm).
set -euo pipefail

ENTRYPOINT=bastion/decision
POLICY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMMITTED="$POLICY_DIR/compiled/policy.wasm"

die() { echo "policies/build.sh: $*" >&2; exit 1; }

command -v opa >/dev/null || die "opa not found on PATH; run: bash .ci/toolchain exec bash policies/build.sh $*"

# Source files only: tests and the compiled output are not part of the policy.
IGNORE=(--ignore '*_test.rego' --ignore compiled --ignore '.*')

# build_into DIR: compile, then extract the module from the bundle into DIR/policy.wasm.
build_into() {
  local dir=$1
  # Build from inside policies/ so the file names the compiler embeds (they
  # appear in runtime error locations) do not depend on the caller's cwd.
  (cd "$POLICY_DIR" && opa build --target wasm --entrypoint "$ENTRYPOINT" \
    "${IGNORE[@]}" --output "$dir/bundle.tar.gz" .)
  # Bundle members are stored as absolute paths ("/policy.wasm"); -P keeps
  # tar from warning about it, -O writes the member to stdout, not to "/".
  tar -xzPf "$dir/bundle.tar.gz" -O /policy.wasm >"$dir/policy.wasm" ||
    die "the bundle opa built has no /policy.wasm"
  [[ -s "$dir/policy.wasm" ]] || die "the bundle opa built has an empty /policy.wasm"
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
  "")
    build_into "$tmp"
    mkdir -p "$(dirname "$COMMITTED")"
    cp "$tmp/policy.wasm" "$COMMITTED"
    echo "policies/build.sh: wrote policies/compiled/policy.wasm ($(wc -c <"$COMMITTED") bytes, opa $(opa version | sed -n 's/^Version: //p'))"
    ;;
  --check)
    if ! (cd "$POLICY_DIR" && opa fmt --fail --list .) >"$tmp/fmt.out"; then
      die "not opa fmt-clean: $(tr '\n' ' ' <"$tmp/fmt.out"); run: bash .ci/toolchain exec opa fmt -w policies/"
    fi
    (cd "$POLICY_DIR" && opa check --strict --ignore compiled .) ||
      die "opa check --strict failed (see above)"
    build_into "$tmp"
    [[ -f "$COMMITTED" ]] || die "policies/compiled/policy.wasm is missing; run: bash .ci/toolchain exec bash policies/build.sh"
    if ! cmp -s "$tmp/policy.wasm" "$COMMITTED"; then
      die "policies/compiled/policy.wasm is stale: it differs from a fresh build of policies/*.rego with opa $(opa version | sed -n 's/^Version: //p'); run: bash .ci/toolchain exec bash policies/build.sh, and commit the result"
    fi
    echo "policies/build.sh: policies/compiled/policy.wasm is current"
    ;;
  *)
    die "usage: build.sh [--check]"
    ;;
esac
