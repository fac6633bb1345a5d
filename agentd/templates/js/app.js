// The {{id}} skill: counts the words of a text (runs of ASCII letters and digits, lower-cased)
// and returns the most frequent ones.
//
// componentize-js (the engine of `jco componentize`) exports this module's `describe` and
// `invoke` as the world's functions. A skill error is thrown as `{ tag, val }` with tag
// `invalid-input`, `transient`, `permanent` or `needs-human`; any other exception traps, and
// the host keeps the end of stderr in the outcome. The host validates the input against
// INPUT_SCHEMA before `invoke` is called, and the output against OUTPUT_SCHEMA after it returns.

import { log } from "agentd:skill/host@0.1.0";

const INPUT_SCHEMA = String.raw`{{input_schema}}`;
const OUTPUT_SCHEMA = String.raw`{{output_schema}}`;

export function describe() {
  return {
    id: "{{id}}",
    version: "0.1.0",
    sideEffect: "pure",
    capabilities: [],
    inputSchema: INPUT_SCHEMA,
    outputSchema: OUTPUT_SCHEMA,
  };
}

export function invoke(invocation) {
  let request;
  try {
    request = JSON.parse(invocation.input);
  } catch (error) {
    throw { tag: "invalid-input", val: `the input is not JSON: ${error}` };
  }
  const counts = new Map();
  for (const word of request.text.match(/[A-Za-z0-9]+/g) ?? []) {
    const lower = word.toLowerCase();
    counts.set(lower, (counts.get(lower) ?? 0) + 1);
  }
  let total = 0;
  for (const count of counts.values()) total += count;
  const ranked = [...counts.entries()]
    .sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .slice(0, request.top ?? 10);
  // Shown by the host at debug level (AGENTD_LOG=debug).
  log("debug", `${counts.size} distinct words`);
  const output = {
    total,
    distinct: counts.size,
    top: ranked.map(([word, count]) => ({ word, count })),
  };
  return { schemaVersion: "agentd.output.v1", output: JSON.stringify(output) };
}
