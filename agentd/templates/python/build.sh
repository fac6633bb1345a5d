#!/bin/sh
# Builds the {{id}} skill with componentize-py and packages it into ./package.
# Needs: componentize-py 0.25.1 ($COMPONENTIZE_PY, else on PATH; `pip install
# componentize-py==0.25.1`), and agentd ($AGENTD, else `agentd` on PATH).
set -eu
cd "$(dirname "$0")"
componentize_py="${COMPONENTIZE_PY:-componentize-py}"
"$componentize_py" --version | grep -q "^componentize-py 0.25.1" ||
  echo "warning: this template was tested with componentize-py 0.25.1" >&2
"$componentize_py" -d wit -w skill componentize app -o {{id}}.wasm
"${AGENTD:-agentd}" skill pack . --component {{id}}.wasm
