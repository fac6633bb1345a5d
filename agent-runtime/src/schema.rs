//! The JSON Schemas a skill declares in `describe`, enforced: each is parsed and compiled at
//! load as JSON Schema draft 2020-12 (a schema that is not JSON, or not a valid schema, refuses
//! the package), the input is checked before dispatch and the output after.
//!
//! Schemas are read as draft 2020-12 whatever their `$schema` says (the WIT contract names that
//! draft), and nothing is fetched: a `$ref` to anything outside the schema document refuses the
//! package (the `jsonschema` crate is built without its HTTP and file resolvers), so loading a
//! package never reaches the network or the disk beyond the package itself.

use std::fmt;

use jsonschema::{Draft, Validator};
use serde_json::Value;

/// Most violations named in one message; the rest are counted.
pub const MAX_VIOLATIONS_NAMED: usize = 5;

/// Longest message kept of one violation, bytes (an enum of a schema can be long).
pub const MAX_VIOLATION_BYTES: usize = 256;

/// Which of a skill's two schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaRole {
    /// The input object's schema.
    Input,
    /// The output object's schema.
    Output,
}

impl fmt::Display for SchemaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchemaRole::Input => "input",
            SchemaRole::Output => "output",
        })
    }
}

/// Why a declared schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The schema text is not JSON.
    #[error("the {role} schema is not JSON: {message}")]
    NotJson {
        /// Which schema.
        role: SchemaRole,
        /// serde_json's diagnosis, with line and column.
        message: String,
    },
    /// The text is JSON but not a valid draft 2020-12 schema (or names a reference that
    /// cannot be resolved inside the document).
    #[error("the {role} schema is not a valid JSON Schema (draft 2020-12): {message}")]
    Invalid {
        /// Which schema.
        role: SchemaRole,
        /// The meta-schema violation or the unresolvable reference.
        message: String,
    },
}

/// A compiled schema with the JSON it was compiled from.
pub struct SkillSchema {
    role: SchemaRole,
    value: Value,
    validator: Validator,
}

impl fmt::Debug for SkillSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkillSchema")
            .field("role", &self.role)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

/// A value that does not match a schema: up to [`MAX_VIOLATIONS_NAMED`] violations, each with
/// the JSON Pointer (RFC 6901) of the offending part of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaViolation {
    /// Which schema was violated.
    pub role: SchemaRole,
    /// `(instance pointer, message)` of the first violations.
    pub violations: Vec<(String, String)>,
    /// Violations in all.
    pub total: usize,
}

impl fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} does not match the skill's {} schema: ", self.role, self.role)?;
        for (index, (pointer, message)) in self.violations.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            let pointer = if pointer.is_empty() {
                "(the whole object)"
            } else {
                pointer
            };
            write!(f, "at {pointer}: {message}")?;
        }
        if self.total > self.violations.len() {
            write!(f, "; and {} more", self.total - self.violations.len())?;
        }
        Ok(())
    }
}

impl SkillSchema {
    /// Parses and compiles `text` as the skill's `role` schema.
    ///
    /// # Errors
    ///
    /// [`SchemaError::NotJson`] or [`SchemaError::Invalid`].
    pub fn compile(role: SchemaRole, text: &str) -> Result<SkillSchema, SchemaError> {
        let value: Value = serde_json::from_str(text).map_err(|error| SchemaError::NotJson {
            role,
            message: error.to_string(),
        })?;
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .build(&value)
            .map_err(|error| SchemaError::Invalid {
                role,
                message: describe_error(&error),
            })?;
        Ok(SkillSchema { role, value, validator })
    }

    /// The schema as JSON.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Checks `instance` against the schema.
    ///
    /// # Errors
    ///
    /// A [`SchemaViolation`] naming the first violations.
    pub fn check(&self, instance: &Value) -> Result<(), SchemaViolation> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let mut violations = Vec::new();
        let mut total = 0;
        for error in self.validator.iter_errors(instance) {
            total += 1;
            if violations.len() < MAX_VIOLATIONS_NAMED {
                // Masked: the message names the offending part by its pointer, never by its
                // value. It goes into the run log and the append-only audit log, and an input
                // can hold anything (a 64 KiB document, a secret).
                let mut message = error.masked().to_string();
                if crate::outcome::cut_to(&mut message, MAX_VIOLATION_BYTES) > 0 {
                    message.push('…');
                }
                violations.push((error.instance_path().to_string(), message));
            }
        }
        Err(SchemaViolation {
            role: self.role,
            violations,
            total,
        })
    }
}

/// A schema error with where in the schema it is, when it is not at the root.
fn describe_error(error: &jsonschema::ValidationError<'_>) -> String {
    let at = error.instance_path().to_string();
    if at.is_empty() {
        error.to_string()
    } else {
        format!("at {at}: {error}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_that_is_not_json_is_refused_naming_the_schema() {
        let error = SkillSchema::compile(SchemaRole::Input, "not json at all {").unwrap_err();
        assert!(
            matches!(
                error,
                SchemaError::NotJson {
                    role: SchemaRole::Input,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().starts_with("the input schema is not JSON"), "{error}");
    }

    #[test]
    fn json_that_is_not_a_schema_is_refused() {
        for text in [
            r#"{"type": "no-such-type"}"#,
            r#"{"minLength": -1}"#,
            "42",
            r#""object""#,
        ] {
            let error = SkillSchema::compile(SchemaRole::Output, text).unwrap_err();
            assert!(
                matches!(
                    error,
                    SchemaError::Invalid {
                        role: SchemaRole::Output,
                        ..
                    }
                ),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn a_reference_outside_the_document_is_refused_without_fetching() {
        for reference in [
            "http://127.0.0.1:9/schema.json",
            "file:///etc/passwd",
            "other.json#/defs/x",
        ] {
            let text = json!({ "$ref": reference }).to_string();
            let error = SkillSchema::compile(SchemaRole::Input, &text).unwrap_err();
            assert!(matches!(error, SchemaError::Invalid { .. }), "{reference}: {error}");
        }
    }

    #[test]
    fn local_references_and_the_2020_12_dialect_work() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "text": { "$ref": "#/$defs/text" } },
            "required": ["text"],
            "$defs": { "text": { "type": "string", "maxLength": 5 } },
            "prefixItems": [{ "type": "string" }]
        });
        let compiled = SkillSchema::compile(SchemaRole::Input, &schema.to_string()).unwrap();
        compiled.check(&json!({ "text": "hello" })).unwrap();
        let violation = compiled.check(&json!({ "text": "hello world" })).unwrap_err();
        assert_eq!(violation.total, 1);
        assert_eq!(violation.violations[0].0, "/text");
    }

    #[test]
    fn a_violation_names_each_pointer_and_counts_the_rest() {
        let schema = json!({
            "type": "object",
            "additionalProperties": { "type": "integer" }
        });
        let compiled = SkillSchema::compile(SchemaRole::Output, &schema.to_string()).unwrap();
        let bad: serde_json::Map<String, Value> = (0..8).map(|i| (format!("k{i}"), json!("x"))).collect();
        let violation = compiled.check(&Value::Object(bad)).unwrap_err();
        assert_eq!(violation.total, 8);
        assert_eq!(violation.violations.len(), MAX_VIOLATIONS_NAMED);
        let text = violation.to_string();
        assert!(
            text.starts_with("the output does not match the skill's output schema: at /k"),
            "{text}"
        );
        assert!(text.ends_with("; and 3 more"), "{text}");
    }

    #[test]
    fn a_violation_never_echoes_the_value() {
        let schema = json!({ "type": "object", "properties": { "text": { "maxLength": 5 } } });
        let compiled = SkillSchema::compile(SchemaRole::Input, &schema.to_string()).unwrap();
        let secret = format!("sk-live-{}", "9".repeat(70_000));
        let text = compiled.check(&json!({ "text": secret })).unwrap_err().to_string();
        assert!(!text.contains("sk-live"), "{}", &text[..200.min(text.len())]);
        assert!(text.len() < 512, "{} bytes", text.len());
        assert!(text.contains("at /text: value is longer than 5 characters"), "{text}");
    }

    #[test]
    fn the_missing_field_is_named() {
        let schema = json!({ "type": "object", "required": ["text"] });
        let compiled = SkillSchema::compile(SchemaRole::Input, &schema.to_string()).unwrap();
        let text = compiled.check(&json!({ "txt": "x" })).unwrap_err().to_string();
        assert!(
            text.contains("(the whole object)") && text.contains("\"text\""),
            "{text}"
        );
    }
}
