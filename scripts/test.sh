#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this script):
#   0. libopus-dev and pkg-config (Debian), which the build links against, if missing;
#   1. formatting and clippy (warnings are errors);
#   2. every Rust test of the workspace, storage tests on SQLite *and* on a throwaway
#      PostgreSQL started here (Debian's `postgresql` is installed if missing);
#   3. end-to-end tests of the binary, with third-party peers installed if missing: SIPp
#      (Debian's `sip-tester`), `openssl s_client`, dnsmasq and socat (a carrier found through
#      DNS SRV, behind a TLS front), coturn's `turnutils_uclient` and
#      `turnutils_peer` (Debian's `coturn`; its server is not started), and headless Chromium
#      (Debian's `chromium`) driven by playwright-core from npm (tests/browser, `npm ci`);
#   4. the OpenAPI document checked by a third-party validator (openapi-spec-validator, PyPI).
# Everything binds to loopback on free ports and cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source scripts/lib/postgres.sh

started=$SECONDS
step() { echo "==> [$((SECONDS - started))s] $*"; }

step "build dependencies"
# libopus (Opus ⇄ G.711 for browsers) is linked from the system through pkg-config.
pkg-config --exists opus 2>/dev/null || { echo "==> installing libopus-dev and pkg-config (Opus for WebRTC legs)"; apt_install libopus-dev pkg-config; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "PostgreSQL for the storage suite"
pg_start

step "third-party test peers"
command -v sipp >/dev/null || { echo "==> installing SIPp (Debian package sip-tester)"; apt_install sip-tester; }
command -v openssl >/dev/null || { echo "==> installing openssl (the TLS client of the SIP over TLS test)"; apt_install openssl; }
command -v dnsmasq >/dev/null || { echo "==> installing dnsmasq (Debian package dnsmasq-base; the DNS server of the trunk SRV test)"; apt_install dnsmasq-base; }
command -v socat >/dev/null || { echo "==> installing socat (the TLS front of the trunk over TLS test)"; apt_install socat; }
command -v turnutils_uclient >/dev/null || { echo "==> installing coturn (turnutils_uclient and turnutils_peer drive the TURN tests)"; apt_install coturn; }
command -v chromium >/dev/null || { echo "==> installing Chromium (the WebRTC tests' browser)"; apt_install chromium; }
command -v npm >/dev/null || { echo "==> installing Node.js and npm (they drive Chromium)"; apt_install nodejs npm; }
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "==> npm ci in tests/browser (playwright-core)"
  (cd tests/browser && npm ci --silent --no-audit --no-fund)
fi
export SWITCHBOARD_TEST_REQUIRE_PEERS=1

step "build"
cargo build --workspace --all-targets --locked

step "tests"
cargo test --workspace --locked

step "OpenAPI document (openapi-spec-validator)"
python_venv
openapi=$(mktemp /tmp/switchboard-openapi.XXXXXX.json)
cargo run --quiet --locked --bin switchboard -- openapi > "$openapi"
.venv/bin/openapi-spec-validator "$openapi"
rm -f "$openapi"

step "all tests passed in $((SECONDS - started))s"
