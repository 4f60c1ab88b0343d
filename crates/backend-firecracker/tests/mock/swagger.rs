//! Firecracker's API description (its swagger 2.0 file) as a request
//! validator: the method and path must be declared under `paths`, and the
//! body must validate against the declared schema.
//!
//! The validator covers the schema keywords the file uses and fails on any
//! other, so a new keyword can never be skipped silently. Objects are
//! closed unless they say `additionalProperties`: Firecracker deserializes
//! every body with serde's `deny_unknown_fields`, so a field the file does
//! not declare is a 400 from the real thing too.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A matched path: its template, its path item, its parameter values.
type Route<'a> = (&'a str, &'a Value, Vec<(String, String)>);

/// The parsed swagger file.
pub struct Spec {
    root: Value,
}

/// Keywords that describe and never constrain.
const ANNOTATIONS: &[&str] = &["description", "default", "example", "title"];

/// Where the contract lives: Firecracker's own swagger file from
/// `shared/reference/`, converted once from YAML to JSON into
/// `tests/contract/` so the tests never depend on what is beside the
/// checkout. The copy must still be of the reference file: see
/// [`check_vendored_copy`].
pub fn spec_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FIRECRACKER_API_JSON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/firecracker-api.json")
}

/// The reference swagger file: `$MICROAGENT_SHARED_DIR/reference/...`, else
/// `shared/reference/...` in the nearest folder above the crate that has
/// one (a clone with `shared/` beside it, as in CI, or a worktree below the
/// folder that holds `shared/`).
pub fn shared_copy() -> Result<PathBuf, String> {
    const FILE: &str = "reference/firecracker-api.yaml";
    if let Some(dir) = std::env::var_os("MICROAGENT_SHARED_DIR") {
        let p = Path::new(&dir).join(FILE);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "MICROAGENT_SHARED_DIR is set but {} is not a file",
                p.display()
            ))
        };
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("shared").join(FILE))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no shared/{FILE} above {}: put the shared/ folder beside the checkout (as CI does) or set MICROAGENT_SHARED_DIR",
                env!("CARGO_MANIFEST_DIR")
            )
        })
}

/// Panics when the reference file is missing or is not the one the
/// vendored JSON was converted from (its SHA-256 is kept beside it).
pub fn check_vendored_copy() {
    let shared = shared_copy().unwrap_or_else(|e| panic!("{e}"));
    let reference = std::fs::read(&shared).expect("shared contract");
    let digest: String = Sha256::digest(&reference)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let record =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/firecracker-api.yaml.sha256");
    let recorded = std::fs::read_to_string(&record).expect("recorded digest");
    assert!(
        recorded.split_whitespace().next() == Some(digest.as_str()),
        "{} changed (sha256 {digest}); convert it to tests/contract/firecracker-api.json again and record its digest in {}",
        shared.display(),
        record.display()
    );
}

impl Spec {
    /// Loads the contract (see [`spec_path`]).
    pub fn load() -> Spec {
        let path = spec_path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Spec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Parses the swagger document (JSON).
    pub fn parse(text: &str) -> Result<Spec, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        if root["swagger"] != "2.0" {
            return Err("not a swagger 2.0 document".into());
        }
        if !root["paths"].is_object() || !root["definitions"].is_object() {
            return Err("no paths or definitions".into());
        }
        Ok(Spec { root })
    }

    /// A definition by name.
    pub fn definition(&self, name: &str) -> Option<&Value> {
        self.root["definitions"].get(name)
    }

    /// The path template matching `path` and the values of its `{params}`.
    fn route(&self, path: &str) -> Option<Route<'_>> {
        let segments: Vec<&str> = path.split('/').collect();
        let paths = self.root["paths"].as_object()?;
        // Literal templates win over parameterised ones, as in any router.
        let mut candidates: Vec<_> = paths.iter().collect();
        candidates.sort_by_key(|(t, _)| t.contains('{'));
        for (template, item) in candidates {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut params = Vec::new();
            let matched = parts.iter().zip(&segments).all(|(t, s)| {
                match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                    Some(name) => {
                        params.push((name.to_string(), s.to_string()));
                        !s.is_empty()
                    }
                    None => t == s,
                }
            });
            if matched {
                return Some((template, item, params));
            }
        }
        None
    }

    /// The status the operation answers on success (the lowest 2xx it declares).
    pub fn success_status(&self, method: &str, path: &str) -> Option<u16> {
        let (_, item, _) = self.route(path)?;
        let responses = item.get(method.to_ascii_lowercase())?["responses"].as_object()?;
        responses
            .keys()
            .filter_map(|k| k.parse::<u16>().ok())
            .filter(|s| (200..300).contains(s))
            .min()
    }

    /// Whether the operation's summary says "Pre-boot only".
    pub fn pre_boot_only(&self, method: &str, path: &str) -> bool {
        self.route(path)
            .and_then(|(_, item, _)| item.get(method.to_ascii_lowercase()))
            .and_then(|op| op["summary"].as_str())
            .is_some_and(|s| s.contains("Pre-boot only"))
    }

    /// The schema of the operation's answer with `status` (or `default`).
    pub fn response_schema(&self, method: &str, path: &str, status: u16) -> Option<&Value> {
        let (_, item, _) = self.route(path)?;
        let responses = &item.get(method.to_ascii_lowercase())?["responses"];
        responses
            .get(status.to_string())
            .or_else(|| responses.get("default"))?
            .get("schema")
    }

    /// Checks one request against the contract.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(), String> {
        let (template, item, params) = self
            .route(path)
            .ok_or_else(|| format!("Invalid request method and/or path: {method} {path}."))?;
        let op = item.get(method.to_ascii_lowercase()).ok_or_else(|| {
            format!(
                "Invalid request method and/or path: {method} {path} ({template} has no {method})."
            )
        })?;
        let parameters = match op.get("parameters") {
            None => Vec::new(),
            Some(Value::Array(a)) => a.iter().collect(),
            Some(other) => return Err(format!("spec: parameters of {template} is {other}")),
        };
        let mut body_value = None;
        let mut body_declared = false;
        for p in &parameters {
            let name = p["name"].as_str().unwrap_or("?");
            let required = p["required"].as_bool().unwrap_or(false);
            match p["in"].as_str() {
                Some("path") => {
                    let value = params
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("spec: {template} lacks path parameter {name}"))?;
                    let schema = serde_json::json!({"type": p["type"].clone()});
                    self.validate(
                        &schema,
                        &Value::String(value),
                        &format!("path parameter {name}"),
                        true,
                    )?;
                }
                Some("body") => {
                    body_declared = true;
                    let bytes = body.filter(|b| !b.is_empty());
                    let Some(bytes) = bytes else {
                        if required {
                            return Err(format!("{method} {path}: the request body is required"));
                        }
                        continue;
                    };
                    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
                        format!(
                            "An error occurred when deserializing the json body of a request: {e}."
                        )
                    })?;
                    self.validate(&p["schema"], &value, "body", true)?;
                    body_value = Some(value);
                }
                Some("query") | Some("header") => {
                    if required {
                        return Err(format!(
                            "spec: required {name} parameters are not simulated"
                        ));
                    }
                }
                other => return Err(format!("spec: parameter location {other:?} not supported")),
            }
        }
        if !body_declared && body.is_some_and(|b| !b.is_empty()) {
            return Err(format!("{method} {path} takes no body"));
        }
        // A path id names the resource the body describes: Firecracker
        // refuses a body whose id field disagrees with the path.
        if let Some(Value::Object(fields)) = &body_value {
            for (name, value) in &params {
                if let Some(field) = fields.get(name) {
                    if field.as_str() != Some(value) {
                        return Err(
                            "The id from the path does not match the id from the body!".into()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Validates `value` against `schema`. `request` forbids `readOnly`
    /// properties (those only ever travel in answers).
    pub fn validate(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        request: bool,
    ) -> Result<(), String> {
        let schema = schema
            .as_object()
            .ok_or_else(|| format!("spec: schema at {at} is not an object"))?;
        if let Some(reference) = schema.get("$ref") {
            let name = reference
                .as_str()
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .ok_or_else(|| format!("spec: unsupported $ref {reference} at {at}"))?;
            let target = self
                .definition(name)
                .ok_or_else(|| format!("spec: $ref to missing definition {name} at {at}"))?;
            // Siblings of $ref are annotations in swagger 2.0.
            return self.validate(target, value, at, request);
        }
        for key in schema.keys() {
            let known = ANNOTATIONS.contains(&key.as_str())
                || key.starts_with("x-")
                || matches!(
                    key.as_str(),
                    "type"
                        | "properties"
                        | "required"
                        | "additionalProperties"
                        | "enum"
                        | "minimum"
                        | "maximum"
                        | "items"
                        | "format"
                        | "readOnly"
                );
            if !known {
                return Err(format!(
                    "spec: keyword {key} at {at} is not supported by this validator"
                ));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str).or_else(|| {
            (schema.contains_key("properties") || schema.contains_key("additionalProperties"))
                .then_some("object")
        });
        if let Some(ty) = ty {
            let ok = match ty {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                other => return Err(format!("spec: type {other} at {at} is not supported")),
            };
            if !ok {
                return Err(format!("{at}: expected {ty}, got {value}"));
            }
        }
        if let Some(options) = schema.get("enum") {
            let options = options
                .as_array()
                .ok_or_else(|| format!("spec: enum at {at} is not a list"))?;
            if !options.contains(value) {
                return Err(format!(
                    "{at}: {value} is not one of {}",
                    Value::Array(options.clone())
                ));
            }
        }
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            if value.as_f64().is_some_and(|v| v < min) {
                return Err(format!("{at}: {value} is below the minimum {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            if value.as_f64().is_some_and(|v| v > max) {
                return Err(format!("{at}: {value} is above the maximum {max}"));
            }
        }
        match schema.get("format").and_then(Value::as_str) {
            Some("int32")
                if value.as_i64().is_none_or(|v| i32::try_from(v).is_err())
                    && value.is_number() =>
            {
                return Err(format!("{at}: {value} does not fit int32"));
            }
            Some("int64") if value.is_number() && value.as_i64().is_none() => {
                return Err(format!("{at}: {value} does not fit int64"));
            }
            _ => {}
        }
        if let Some(items) = schema.get("items") {
            if let Some(list) = value.as_array() {
                for (i, item) in list.iter().enumerate() {
                    self.validate(items, item, &format!("{at}[{i}]"), request)?;
                }
            }
        }
        if let Some(fields) = value.as_object() {
            let empty = serde_json::Map::new();
            let properties = schema
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for name in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(name) {
                        return Err(format!("{at}: missing field `{name}`"));
                    }
                }
            }
            for (name, field) in fields {
                let here = format!("{at}.{name}");
                match properties.get(name) {
                    Some(property) => {
                        if request && self.read_only(property) {
                            return Err(format!("{here} is read-only"));
                        }
                        self.validate(property, field, &here, request)?;
                    }
                    None => match schema.get("additionalProperties") {
                        None | Some(Value::Bool(false)) => {
                            return Err(format!("{at}: unknown field `{name}`"));
                        }
                        Some(Value::Bool(true)) => {}
                        Some(extra) => self.validate(extra, field, &here, request)?,
                    },
                }
            }
        }
        Ok(())
    }

    fn read_only(&self, property: &Value) -> bool {
        if property["readOnly"] == true {
            return true;
        }
        property["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .and_then(|n| self.definition(n))
            .is_some_and(|d| d["readOnly"] == true)
    }
}
