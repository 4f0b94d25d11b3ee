//! What an item job's workers hand back, as the workflow file declares it: the record schema
//! ([`OutputSchema`], compiled when the file is loaded, so a bad schema is a config error),
//! how workers answer ([`OutputRoute`]) and the results file's format ([`ResultsFormat`]).
//!
//! The item runner (`crate::items`) uses these types from here; config does not depend on it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Format of the results file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultsFormat {
    #[default]
    Jsonl,
    Csv,
}

/// The workflow's JSON Schema for one record, compiled, with the `id` property it needs.
#[derive(Debug)]
pub struct OutputSchema {
    record: Value,
    tool_input: Value,
    validator: jsonschema::Validator,
}

/// Why an output schema cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the output schema must describe a JSON object (`\"type\": \"object\"`), found {found}"
    )]
    NotAnObject { found: String },
    #[error("the output schema's `id` property must allow a string")]
    IdNotString,
    #[error("the output schema is not a valid JSON Schema: {message}")]
    Invalid { message: String },
}

impl OutputSchema {
    /// Compile `schema` (a record's schema). An `id` property (string) is added when absent and
    /// made required, since every record is matched to its item by id.
    pub fn new(schema: Value) -> Result<OutputSchema, SchemaError> {
        let Value::Object(mut object) = schema else {
            return Err(SchemaError::NotAnObject {
                found: crate::text::cut(&schema.to_string(), 60),
            });
        };
        match object.get("type") {
            None => {
                object.insert("type".into(), json!("object"));
            }
            Some(Value::String(kind)) if kind == "object" => {}
            Some(other) => {
                return Err(SchemaError::NotAnObject {
                    found: format!("type {other}"),
                });
            }
        }
        let properties = object
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(properties) = properties.as_object_mut() else {
            return Err(SchemaError::Invalid {
                message: "`properties` is not an object".into(),
            });
        };
        match properties.get("id") {
            None => {
                properties.insert(
                    "id".into(),
                    json!({"type": "string", "description": "The item's id, exactly as given."}),
                );
            }
            Some(id) => {
                let allows_string = match &id["type"] {
                    Value::Null => true,
                    Value::String(kind) => kind == "string",
                    Value::Array(kinds) => kinds.iter().any(|k| k == "string"),
                    _ => false,
                };
                if !allows_string {
                    return Err(SchemaError::IdNotString);
                }
            }
        }
        let required = object
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(required) = required.as_array_mut() else {
            return Err(SchemaError::Invalid {
                message: "`required` is not an array".into(),
            });
        };
        if !required.iter().any(|name| name == "id") {
            required.insert(0, json!("id"));
        }
        let record = Value::Object(object);
        let validator =
            jsonschema::validator_for(&record).map_err(|error| SchemaError::Invalid {
                message: error.to_string(),
            })?;
        // `$schema` belongs at a document's root, not inside the tool's schema.
        let mut tool_record = record.clone();
        if let Some(object) = tool_record.as_object_mut() {
            object.remove("$schema");
        }
        let tool_input = json!({
            "type": "object",
            "properties": {
                "results": {
                    "type": "array",
                    "description": "One record per item, each with the item's id.",
                    "items": tool_record,
                }
            },
            "required": ["results"],
        });
        Ok(OutputSchema {
            record,
            tool_input,
            validator,
        })
    }

    /// The record schema as sent (with `id`).
    pub fn record_schema(&self) -> &Value {
        &self.record
    }

    /// The input schema of the workers' `submit_results` tool.
    pub fn tool_input_schema(&self) -> &Value {
        &self.tool_input
    }

    /// The schema errors of `record`, each as `path: message` (empty when valid).
    pub fn errors(&self, record: &Value) -> Vec<String> {
        self.validator
            .iter_errors(record)
            .map(|error| {
                let path = error.instance_path().to_string();
                if path.is_empty() {
                    error.to_string()
                } else {
                    format!("{path}: {error}")
                }
            })
            .collect()
    }

    /// The property names in schema order (for CSV columns), `id` first.
    pub fn property_names(&self) -> Vec<String> {
        let mut names = vec!["id".to_owned()];
        if let Some(properties) = self.record["properties"].as_object() {
            names.extend(properties.keys().filter(|k| *k != "id").cloned());
        }
        names
    }
}

/// How a worker hands back its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputRoute {
    /// A forced call of the `submit_results` tool (works with every provider that has tools).
    #[default]
    Tool,
    /// The provider's structured-output format (`output_config.format` /
    /// `response_format`): the reply text is `{"results": [...]}`.
    JsonSchema,
}
