"""The {{id}} skill: counts the words of a text (runs of ASCII letters and digits, lower-cased)
and returns the most frequent ones.

componentize-py calls the methods of the class `WitWorld` in this module (the world's
exports). A skill error is raised as `Err(...)` holding one of the `SkillError_*` cases; any
other exception traps, and the host keeps the end of its traceback (stderr) in the outcome.
The host validates the input against INPUT_SCHEMA before `invoke` is called, and the output
against OUTPUT_SCHEMA after it returns.
"""

import json
import re
from collections import Counter

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

INPUT_SCHEMA = r'''{{input_schema}}'''
OUTPUT_SCHEMA = r'''{{output_schema}}'''

WORD = re.compile(r"[A-Za-z0-9]+")


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            id="{{id}}",
            version="0.1.0",
            side_effect=types.SideEffect.PURE,
            capabilities=[],
            input_schema=INPUT_SCHEMA,
            output_schema=OUTPUT_SCHEMA,
        )

    def invoke(self, invocation: types.Invocation) -> types.Output:
        try:
            request = json.loads(invocation.input)
        except ValueError as error:
            raise Err(types.SkillError_InvalidInput(f"the input is not JSON: {error}"))
        counts = Counter(word.lower() for word in WORD.findall(request["text"]))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: request.get("top", 10)]
        # Shown by the host at debug level (AGENTD_LOG=debug).
        host.log(host.LogLevel.DEBUG, f"{len(counts)} distinct words")
        output = {
            "total": sum(counts.values()),
            "distinct": len(counts),
            "top": [{"word": word, "count": count} for word, count in ranked],
        }
        return types.Output(schema_version="agentd.output.v1", output=json.dumps(output))
