#!/bin/sh
# Builds the {{id}} skill with componentize-js (the engine under `jco componentize`) and
# packages it into ./package.
# Needs: Node.js, componentize-js 0.22.0 ($COMPONENTIZE_JS, else `npm install` here and
# node_modules/.bin/componentize-js), and agentd ($AGENTD, else `agentd` on PATH).
# `-d http -d fetch-event`: the host does not provide wasi:http (HTTP goes through
# agentd:skill/host's http-fetch), and the default build imports it.
set -eu
cd "$(dirname "$0")"
if [ -z "${COMPONENTIZE_JS:-}" ]; then
  [ -x node_modules/.bin/componentize-js ] || npm install --no-audit --no-fund
  COMPONENTIZE_JS=node_modules/.bin/componentize-js
fi
"$COMPONENTIZE_JS" app.js --wit wit --world-name skill -d http -d fetch-event --out {{id}}.wasm
"${AGENTD:-agentd}" skill pack . --component {{id}}.wasm
