#!/usr/bin/env bash
# Rebuilds the SIP.js bundle the web phone (/phone) is served with: server/static/phone/vendor/.
# SIP.js is published on npm as ES modules (193 files); esbuild bundles them into one minified
# ES module so the binary serves a single file and needs no Node.js at run time. Run it by hand
# when upgrading SIP.js; the output is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-0.21.2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  npm init -y >/dev/null
  npm install --silent --no-audit --no-fund "sip.js@$version" esbuild@0.25
  printf 'export * from "sip.js";\nexport { Web } from "sip.js";\n' > entry.js
  ./node_modules/.bin/esbuild entry.js --bundle --format=esm --minify --legal-comments=inline \
    --target=es2020 --outfile="sip-$version.min.js"
)
out=server/static/phone/vendor
cp "$work/sip-$version.min.js" "$out/"
cp "$work/node_modules/sip.js/LICENSE.md" "$out/LICENSE-sip.js.md"
echo "wrote $out/sip-$version.min.js; point server/src/http/phone.rs and phone.js at it"
