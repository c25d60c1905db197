#!/usr/bin/env bash
# Tests `factum serve` against its own OpenAPI description with schemathesis (from PyPI):
# generated valid and invalid requests to every operation, checked for server errors,
# undocumented statuses, content types and bodies that break the description, invalid input
# that is accepted, valid input that is refused, and (with tokens) requests that get through
# without one. It runs twice on fresh stores: without tokens, and with an auth file.
#
#   scripts/schemathesis.sh                 # builds factum (release), installs schemathesis
#   FACTUM_BIN=target/debug/factum scripts/schemathesis.sh
#   SCHEMATHESIS_EXAMPLES=300 SCHEMATHESIS_SEED=7 scripts/schemathesis.sh
#
# The subscriptions (server-sent events that never end) are left out: the API tests follow
# them. Settings: scripts/schemathesis.toml. Exits non-zero on any finding.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
version=4.32.5
venv=${SCHEMATHESIS_VENV:-$root/target/schemathesis-$version}
examples=${SCHEMATHESIS_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-$RANDOM}

# Exit 3: schemathesis could not be installed (no python3 with venv, or no PyPI).
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $version into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || exit 3
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" \
        || { rm -rf "$venv"; exit 3; }
fi

bin=${FACTUM_BIN:-}
if [ -z "$bin" ]; then
    cargo build --quiet --release -p factum-cli --manifest-path "$root/Cargo.toml"
    bin=$root/target/release/factum
fi

work=$(mktemp -d)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# Starts `factum serve` on a fresh store and a free port; sets $server and $url.
start() {
    local name=$1
    shift
    mkdir -p "$work/$name"
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/$name/data" "$@" 2>"$work/$name/log" &
    server=$!
    url=
    for _ in $(seq 100); do
        url=$(grep -o 'https\?://[0-9.:]*' "$work/$name/log" | head -1 || true)
        [ -n "$url" ] && break
        kill -0 "$server" 2>/dev/null || { cat "$work/$name/log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$url" ] || { echo "factum serve did not start" >&2; cat "$work/$name/log" >&2; exit 1; }
}

stop() {
    kill "$server"
    wait "$server" || { echo "factum serve did not stop cleanly" >&2; cat "$work/$1/log" >&2; exit 1; }
    server=
    if grep -q 'panicked' "$work/$1/log"; then
        echo "factum serve panicked:" >&2
        cat "$work/$1/log" >&2
        exit 1
    fi
}

run() {
    echo "schemathesis against $url ($1), seed $seed, $examples examples per operation" >&2
    shift
    # Run inside the temporary directory: schemathesis keeps a cache in its working directory.
    (cd "$work" && "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" run "$url/openapi.json" \
        --exclude-path-regex '/(subscribe|messages)$' --max-examples "$examples" \
        --seed "$seed" --request-timeout 10 --workers 1 "$@")
}

start open
run "no tokens"
stop open

secret=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
cat >"$work/auth.toml" <<EOF
[[token]]
name = "schemathesis"
secret = "$secret"
admin = [""]
EOF
start tokens --auth "$work/auth.toml"
run "with a token" --header "Authorization: Bearer $secret"
stop tokens
echo "schemathesis found nothing" >&2
