//! Versioned JSON envelopes, parsed strictly.
//!
//! Strict means: the schema version is explicit and checked first (an unknown version is its own
//! error, so a newer client gets "unsupported version", not a confusing field error), unknown
//! fields are rejected, and the payload must be a JSON object.

use crate::{INVOKE_SCHEMA_V1, OUTPUT_SCHEMA_V1};

/// Why an envelope was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The text is not JSON; `line` and `column` are 1-based.
    #[error("not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// serde_json's description.
        message: String,
    },
    /// The envelope has no string `schema_version`.
    #[error("the envelope has no `schema_version` string; expected `{expected}`")]
    MissingVersion {
        /// The version this parser reads.
        expected: &'static str,
    },
    /// The envelope names a schema version this build does not know.
    #[error("unsupported schema version `{found}`; this agentd reads `{expected}`")]
    UnsupportedVersion {
        /// The version in the envelope.
        found: String,
        /// The version this parser reads.
        expected: &'static str,
    },
    /// The envelope has the right version but the wrong shape (unknown field, wrong type, ...).
    #[error("invalid `{schema}` envelope: {message}")]
    Shape {
        /// The schema version being parsed.
        schema: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn json_error(error: &serde_json::Error) -> EnvelopeError {
    EnvelopeError::Json {
        line: error.line(),
        column: error.column(),
        message: error.to_string(),
    }
}

/// Checks `value["schema_version"] == expected`.
fn check_version(value: &serde_json::Value, expected: &'static str) -> Result<(), EnvelopeError> {
    match value.get("schema_version") {
        Some(serde_json::Value::String(found)) if found == expected => Ok(()),
        Some(serde_json::Value::String(found)) => Err(EnvelopeError::UnsupportedVersion {
            found: found.clone(),
            expected,
        }),
        _ => Err(EnvelopeError::MissingVersion { expected }),
    }
}

/// A request to run one skill step: the file `agentd run <skill> --input FILE` reads.
///
/// Shape (`agentd.invoke.v1`):
///
/// ```json
/// { "schema_version": "agentd.invoke.v1", "input": { "text": "mail me at a@example.org" } }
/// ```
///
/// # Examples
///
/// ```
/// let request = plugin_abi::InvokeRequest::parse(
///     r#"{"schema_version": "agentd.invoke.v1", "input": {"text": "hi"}}"#,
/// ).unwrap();
/// assert_eq!(request.input["text"], "hi");
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// Always [`INVOKE_SCHEMA_V1`].
    pub schema_version: String,
    /// The skill's input object.
    pub input: serde_json::Map<String, serde_json::Value>,
}

impl InvokeRequest {
    /// Wraps an input object in a current-version envelope.
    pub fn new(input: serde_json::Map<String, serde_json::Value>) -> Self {
        InvokeRequest {
            schema_version: INVOKE_SCHEMA_V1.to_owned(),
            input,
        }
    }

    /// Parses and checks an `agentd.invoke.v1` envelope.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError::Json`] for malformed JSON, [`EnvelopeError::MissingVersion`] or
    /// [`EnvelopeError::UnsupportedVersion`] for a wrong version, [`EnvelopeError::Shape`] for an
    /// unknown field or an `input` that is not an object.
    pub fn parse(text: &str) -> Result<Self, EnvelopeError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| json_error(&e))?;
        check_version(&value, INVOKE_SCHEMA_V1)?;
        serde_json::from_value(value).map_err(|error| EnvelopeError::Shape {
            schema: INVOKE_SCHEMA_V1,
            message: error.to_string(),
        })
    }

    /// The input object as JSON text, as it travels in `invocation.input`.
    pub fn input_json(&self) -> String {
        serde_json::Value::Object(self.input.clone()).to_string()
    }
}

/// A skill's successful output, as the host receives it (`output` record of the WIT world).
pub struct OutputEnvelope;

impl OutputEnvelope {
    /// Checks a guest's `output` record: the version must be [`OUTPUT_SCHEMA_V1`] and the text a
    /// JSON object.
    ///
    /// # Errors
    ///
    /// [`EnvelopeError`] naming what is wrong.
    pub fn parse(
        schema_version: &str,
        output: &str,
    ) -> Result<serde_json::Map<String, serde_json::Value>, EnvelopeError> {
        if schema_version != OUTPUT_SCHEMA_V1 {
            return Err(EnvelopeError::UnsupportedVersion {
                found: schema_version.to_owned(),
                expected: OUTPUT_SCHEMA_V1,
            });
        }
        match serde_json::from_str(output).map_err(|e| json_error(&e))? {
            serde_json::Value::Object(map) => Ok(map),
            other => Err(EnvelopeError::Shape {
                schema: OUTPUT_SCHEMA_V1,
                message: format!("the output must be a JSON object, not `{other}`"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`invoke_envelope`): a 64-digit integer was read one ulp off by
    /// serde_json's default fast path, so the input re-serialised for the guest differed from
    /// the value the caller sent. Numbers are now parsed correctly rounded.
    #[test]
    fn numbers_reach_the_guest_as_the_caller_wrote_them() {
        let text = r#"{"schema_version": "agentd.invoke.v1", "input": {"n": 2222222222000000000000000000000000000000000000000000000116190355, "f": 0.30000000000000004, "big": 1.7976931348623157e308}}"#;
        let request = InvokeRequest::parse(text).unwrap();
        let again: serde_json::Value = serde_json::from_str(&request.input_json()).unwrap();
        assert_eq!(again.as_object(), Some(&request.input));
        assert_eq!(request.input["n"].as_f64(), Some(2.222222222e63));
        assert_eq!(request.input["f"].as_f64(), Some(0.1 + 0.2));
    }

    #[test]
    fn invoke_request_is_parsed_strictly() {
        let check = |text: &str, expected: &str| {
            assert_eq!(InvokeRequest::parse(text).unwrap_err().to_string(), expected, "{text}");
        };
        check(
            "{",
            "not valid JSON at line 1, column 1: EOF while parsing an object at line 1 column 1",
        );
        check(
            r#"{"input": {}}"#,
            "the envelope has no `schema_version` string; expected `agentd.invoke.v1`",
        );
        check(
            r#"{"schema_version": "agentd.invoke.v2", "input": {}}"#,
            "unsupported schema version `agentd.invoke.v2`; this agentd reads `agentd.invoke.v1`",
        );
        check(
            r#"{"schema_version": "agentd.invoke.v1", "input": {}, "extra": 1}"#,
            "invalid `agentd.invoke.v1` envelope: unknown field `extra`, expected `schema_version` or `input`",
        );
        check(
            r#"{"schema_version": "agentd.invoke.v1", "input": "text"}"#,
            "invalid `agentd.invoke.v1` envelope: invalid type: string \"text\", expected a map",
        );
        let ok = InvokeRequest::parse(r#"{"schema_version": "agentd.invoke.v1", "input": {"a": 1}}"#).unwrap();
        assert_eq!(ok.input_json(), r#"{"a":1}"#);
    }

    #[test]
    fn output_must_be_a_versioned_object() {
        assert!(OutputEnvelope::parse(OUTPUT_SCHEMA_V1, r#"{"ok": true}"#).is_ok());
        assert_eq!(
            OutputEnvelope::parse(OUTPUT_SCHEMA_V1, "[1]").unwrap_err().to_string(),
            "invalid `agentd.output.v1` envelope: the output must be a JSON object, not `[1]`"
        );
        assert!(matches!(
            OutputEnvelope::parse("v0", "{}"),
            Err(EnvelopeError::UnsupportedVersion { .. })
        ));
    }
}
