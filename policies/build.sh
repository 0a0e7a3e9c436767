#!/usr/bin/env bash
# Compiles the Rego in policies/ to the WebAssembly module the broker loads.
#
#   bash policies/build.sh           rebuild policies/compiled/policy.wasm
#   bash policies/build.sh --check   lint the Rego, run every example's opa test,
#                                    rebuild into a temp dir and fail if the
#                                    committed policy.wasm is stale
#
# Builds use policies/capabilities.json: only builtins a WASM policy can run
# inside the broker (no I/O, no regex.split), so a policy that calls anything
# else fails here with "undefined function", not at call time. Regenerate it
# with `bastion policy capabilities --write` when the pinned OPA changes.
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
# Both entrypoints go into the one module: tool-call decisions and token grants (grants.rego).
ENTRYPOINTS=(--entrypoint bastion/decision --entrypoint bastion/grants)
POLICY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMMITTED="$POLICY_DIR/compiled/policy.wasm"
CAPABILITIES="$POLICY_DIR/capabilities.json"
# The default policy's sources (package bastion), which each example is layered on.
DEFAULT_POLICY=(bastion.rego flows.rego)

die() { echo "policies/build.sh: $*" >&2; exit 1; }

command -v opa >/dev/null || die "opa not found on PATH; run: bash .ci/toolchain exec bash policies/build.sh $*"

# Source files only: tests, the compiled output and the example site policies
# (policies/examples/, tested on their own below) are not part of the policy.
IGNORE=(--ignore '*_test.rego' --ignore compiled --ignore examples --ignore '.*')

# build_into DIR: compile, then extract the module from the bundle into DIR/policy.wasm.
build_into() {
  local dir=$1
  # Build from inside policies/ so the file names the compiler embeds (they
  # appear in runtime error locations) do not depend on the caller's cwd.
  (cd "$POLICY_DIR" && opa build --target wasm "${ENTRYPOINTS[@]}" \
    --capabilities "$CAPABILITIES" "${IGNORE[@]}" --output "$dir/bundle.tar.gz" .)
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
    (cd "$POLICY_DIR" && opa check --strict --capabilities "$CAPABILITIES" "${IGNORE[@]}" .) ||
      die "the policy calls a builtin outside policies/capabilities.json (see above)"
    # Each example is a site policy layered on the default one: test it alone
    # with the default policy, and prove it builds with the WASM capabilities.
    for test in "$POLICY_DIR"/examples/*_test.rego; do
      example="${test%_test.rego}.rego"
      name="examples/$(basename "$example")"
      [[ -f "$example" ]] || die "$test has no $(basename "$example") beside it"
      (cd "$POLICY_DIR" && opa test "${DEFAULT_POLICY[@]}" "$name" "examples/$(basename "$test")" >"$tmp/example.out" 2>&1) ||
        { cat "$tmp/example.out" >&2; die "opa test failed for $name"; }
      (cd "$POLICY_DIR" && opa build --target wasm --entrypoint "$ENTRYPOINT" --capabilities "$CAPABILITIES" \
        --output "$tmp/example.tar.gz" "${DEFAULT_POLICY[@]}" "$name") || die "$name does not build for WASM"
      echo "policies/build.sh: $name: $(tail -n 1 "$tmp/example.out")"
    done
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
