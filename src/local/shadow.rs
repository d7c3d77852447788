//! The Device Shadow service of the embedded AWS IoT Core: classic and named shadows over MQTT.
//!
//! Sans-IO: the broker hands every PUBLISH whose topic is a shadow request topic
//! ([`ShadowService::handles`]) to [`ShadowService::handle`] and publishes the [`Outbound`]
//! messages it returns, in order. Nothing here touches a socket or a clock: the caller passes
//! `now`.
//!
//! Behaviour follows the AWS IoT Developer Guide (device-shadow-mqtt, device-shadow-document,
//! device-shadow-data-flow, device-shadow-error-messages):
//! - `…/get` answers `…/get/accepted` with `state` (`desired`, `reported`, and `delta` when they
//!   differ), `metadata`, `version`, `timestamp` and the request's `clientToken`, or
//!   `…/get/rejected` 404.
//! - `…/update` deep-merges `state.desired` / `state.reported` (`null` deletes a key, a section
//!   set to `null` is removed, arrays are replaced whole), increments `version` (checked when the
//!   request carries one), and publishes `…/update/accepted`, `…/update/documents` and, when
//!   `desired` has keys that differ from `reported`, `…/update/delta`.
//! - `…/delete` removes the shadow but keeps its version counter for
//!   [`DELETED_VERSION_RETENTION_SECS`] (AWS: 48 hours), so a later update continues from it.
//!
//! Choices where the AWS documentation is silent or inconsistent (see each constant):
//! - Nesting: [`MAX_STATE_DEPTH`] objects/arrays inside `desired` or `reported`, the section
//!   object itself counting as the first level (the error page says "maximum is 6").
//! - Unknown top-level request keys are ignored (AWS: "JSON content outside of those sections is
//!   ignored"); unknown keys inside `state` are rejected ("State contains an invalid node").
//! - `"state": null` is rejected as a missing `state`.
//! - The `/delete` payload is ignored except for a valid `clientToken`, which is echoed.
//! - `/update/documents` carries `"previous": null` when the update created the shadow.
//! - Array metadata holds one `{"timestamp"}` per element (what the service returns), not one
//!   for the whole array (the guide's simplified example).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::service::Outbound;

/// Largest accepted shadow state, in bytes of compact JSON of `{"desired":…,"reported":…}`
/// after the update is applied (metadata excluded, as AWS counts it). Larger: 413.
pub const MAX_STATE_BYTES: usize = 8 * 1024;
/// Deepest nesting of objects and arrays in a request's `state.desired` or `state.reported`,
/// counting that section object as level 1 (`{"a":{"b":1}}` is 2 levels). Deeper: 400.
pub const MAX_STATE_DEPTH: usize = 6;
/// Longest accepted `clientToken`, in bytes. Longer: 400 "Invalid clientToken".
pub const MAX_CLIENT_TOKEN_BYTES: usize = 64;
/// Longest thing name, in bytes (AWS quota). Longer: the request is rejected with 400.
pub const MAX_THING_NAME_BYTES: usize = 128;
/// Longest shadow name, in bytes (AWS quota). Longer: the request is rejected with 400.
pub const MAX_SHADOW_NAME_BYTES: usize = 64;
/// How long a deleted shadow's version counter is kept: AWS continues the version of a shadow
/// re-created within 48 hours of its deletion and starts again from 0 after that.
pub const DELETED_VERSION_RETENTION_SECS: u64 = 48 * 3600;

const MSG_INVALID_JSON: &str = "Payload contains invalid json";
const MSG_ARRAY_NULL: &str = "Invalid JSON";
const MSG_UNSUPPORTED_ENCODING: &str =
    "Unsupported documented encoding; supported encoding is UTF-8";
const MSG_MISSING_STATE: &str = "Missing required node: state";
const MSG_STATE_NOT_OBJECT: &str = "State node must be an object";
const MSG_INVALID_VERSION: &str = "Invalid version";
const MSG_INVALID_CLIENT_TOKEN: &str = "Invalid clientToken";
const MSG_TOO_DEEP: &str = "JSON contains too many levels of nesting; maximum is 6";
const MSG_VERSION_CONFLICT: &str = "Version conflict";
const MSG_TOO_LARGE: &str = "The payload exceeds the maximum size allowed";
const MSG_INVALID_THING_NAME: &str = "Invalid thing name";
const MSG_INVALID_SHADOW_NAME: &str = "Invalid shadow name";

/// The three shadow operations a device can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Get,
    Update,
    Delete,
}

impl Operation {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "get" => Some(Self::Get),
            "update" => Some(Self::Update),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// A parsed shadow request topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestTopic<'a> {
    thing: &'a str,
    name: Option<&'a str>,
    operation: Operation,
}

impl<'a> RequestTopic<'a> {
    /// `$aws/things/<thing>/shadow/<op>` or `$aws/things/<thing>/shadow/name/<name>/<op>`.
    fn parse(topic: &'a str) -> Option<Self> {
        let parts: Vec<&str> = topic.split('/').collect();
        let (thing, name, operation) = match parts.as_slice() {
            ["$aws", "things", thing, "shadow", op] => (*thing, None, *op),
            ["$aws", "things", thing, "shadow", "name", name, op] => (*thing, Some(*name), *op),
            _ => return None,
        };
        if thing.is_empty() || name.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            thing,
            name,
            operation: Operation::parse(operation)?,
        })
    }

    /// The topic of a response to this request, e.g. `…/update/accepted`.
    fn response(&self, suffix: &str) -> String {
        let op = self.operation.word();
        match self.name {
            None => format!("$aws/things/{}/shadow/{op}/{suffix}", self.thing),
            Some(name) => format!(
                "$aws/things/{}/shadow/name/{name}/{op}/{suffix}",
                self.thing
            ),
        }
    }
}

/// Why a request is answered on `…/rejected`: an HTTP-style code and AWS's message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rejection {
    code: u16,
    message: String,
}

impl Rejection {
    fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

/// A stored shadow: `state` and `metadata` hold only the `desired` / `reported` sections.
#[derive(Debug, Clone, PartialEq)]
struct StoredShadow {
    state: Map<String, Value>,
    metadata: Map<String, Value>,
    version: u64,
    timestamp: u64,
}

impl StoredShadow {
    /// `{state, metadata, version}`, as in `/update/documents`.
    fn snapshot(&self) -> Value {
        json!({
            "state": Value::Object(self.state.clone()),
            "metadata": Value::Object(self.metadata.clone()),
            "version": self.version,
        })
    }

    /// The GET document: state with `delta` when it is non-empty, metadata, version, timestamp.
    fn get_document(&self, timestamp: u64) -> Map<String, Value> {
        let mut state = self.state.clone();
        let delta = delta_of_sections(&self.state);
        if !delta.is_empty() {
            state.insert("delta".to_owned(), Value::Object(delta));
        }
        let mut doc = Map::new();
        doc.insert("state".to_owned(), Value::Object(state));
        doc.insert("metadata".to_owned(), Value::Object(self.metadata.clone()));
        doc.insert("version".to_owned(), Value::from(self.version));
        doc.insert("timestamp".to_owned(), Value::from(timestamp));
        doc
    }
}

/// Everything known about one (thing, shadow name): the live shadow, if any, and the last
/// version number used (kept across a delete).
#[derive(Debug, Clone, Default)]
struct ShadowSlot {
    current: Option<StoredShadow>,
    last_version: u64,
    deleted_at: Option<u64>,
}

impl ShadowSlot {
    /// The version the next update must quote (and will increment), at `now`.
    fn version_at(&self, now: u64) -> u64 {
        match (&self.current, self.deleted_at) {
            (None, Some(deleted))
                if now.saturating_sub(deleted) > DELETED_VERSION_RETENTION_SECS =>
            {
                0
            }
            _ => self.last_version,
        }
    }
}

/// A validated `/update` request.
#[derive(Debug)]
struct UpdateRequest {
    /// The request's `state` object: `desired` / `reported`, each an object or `null`.
    state: Map<String, Value>,
    version: Option<u64>,
}

type ShadowKey = (String, Option<String>);

/// Successful responses before the `clientToken` is added: (topic, JSON document).
type Responses = Vec<(String, Map<String, Value>)>;

/// The AWS IoT Device Shadow service (classic and named shadows), in memory and sans-IO.
#[derive(Debug, Default)]
pub struct ShadowService {
    shadows: HashMap<ShadowKey, ShadowSlot>,
}

impl ShadowService {
    /// An empty service: no shadow exists.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `topic` is a shadow request topic: `$aws/things/<thing>/shadow/{get,update,delete}`
    /// or `$aws/things/<thing>/shadow/name/<name>/{get,update,delete}` (response topics are not).
    #[must_use]
    pub fn handles(topic: &str) -> bool {
        RequestTopic::parse(topic).is_some()
    }

    /// Handles one request; returns every response to publish, in the order AWS sends them
    /// (update: `/update/accepted`, then `/update/documents`, then `/update/delta` when
    /// `desired` differs from `reported`). A topic that is not a request topic returns nothing.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now: SystemTime) -> Vec<Outbound> {
        let Some(request) = RequestTopic::parse(topic) else {
            return Vec::new();
        };
        let timestamp = epoch_seconds(now);
        // AWS ignores the content of a /delete payload; only a valid clientToken is echoed.
        let lenient = request.operation == Operation::Delete;
        let body = match parse_body(payload) {
            Ok(body) => body,
            Err(_) if lenient => Map::new(),
            Err(rejection) => return vec![rejected(&request, &rejection, None, timestamp)],
        };
        let token = match client_token(&body) {
            Ok(token) => token,
            Err(_) if lenient => None,
            Err(rejection) => return vec![rejected(&request, &rejection, None, timestamp)],
        };
        self.answer(&request, token, timestamp, |service| {
            match request.operation {
                Operation::Get => service.get(&request, timestamp),
                Operation::Update => service.update(&request, &body, timestamp),
                Operation::Delete => service.delete(&request, timestamp),
            }
        })
    }

    /// The document a GET would return now (`state` with `delta`, `metadata`, `version`, and the
    /// `timestamp` of the last update; no `clientToken`), or `None` when no such shadow exists.
    #[must_use]
    pub fn document(&self, thing: &str, name: Option<&str>) -> Option<Value> {
        let key = (thing.to_owned(), name.map(str::to_owned));
        let shadow = self.shadows.get(&key)?.current.as_ref()?;
        Some(Value::Object(shadow.get_document(shadow.timestamp)))
    }

    /// Validates the names, runs `operation`, and turns its outcome into responses carrying
    /// `token` (successes are built by the operation; a rejection goes to `…/rejected`).
    fn answer(
        &mut self,
        request: &RequestTopic<'_>,
        token: Option<String>,
        timestamp: u64,
        operation: impl FnOnce(&mut Self) -> Result<Responses, Rejection>,
    ) -> Vec<Outbound> {
        let outcome = validate_names(request).and_then(|()| operation(self));
        match outcome {
            Ok(responses) => responses
                .into_iter()
                .map(|(topic, mut doc)| {
                    if let Some(token) = &token {
                        doc.insert("clientToken".to_owned(), Value::String(token.clone()));
                    }
                    Outbound::new(topic, encode(&Value::Object(doc)))
                })
                .collect(),
            Err(rejection) => vec![rejected(request, &rejection, token.as_deref(), timestamp)],
        }
    }

    fn get(&self, request: &RequestTopic<'_>, timestamp: u64) -> Result<Responses, Rejection> {
        let shadow = self
            .shadows
            .get(&key_of(request))
            .and_then(|slot| slot.current.as_ref())
            .ok_or_else(|| not_found(request))?;
        Ok(vec![(
            request.response("accepted"),
            shadow.get_document(timestamp),
        )])
    }

    fn delete(
        &mut self,
        request: &RequestTopic<'_>,
        timestamp: u64,
    ) -> Result<Responses, Rejection> {
        let slot = self
            .shadows
            .get_mut(&key_of(request))
            .filter(|slot| slot.current.is_some())
            .ok_or_else(|| not_found(request))?;
        let version = slot.current.take().map_or(slot.last_version, |s| s.version);
        slot.deleted_at = Some(timestamp);
        let mut doc = Map::new();
        doc.insert("version".to_owned(), Value::from(version));
        doc.insert("timestamp".to_owned(), Value::from(timestamp));
        Ok(vec![(request.response("accepted"), doc)])
    }

    fn update(
        &mut self,
        request: &RequestTopic<'_>,
        body: &Map<String, Value>,
        timestamp: u64,
    ) -> Result<Responses, Rejection> {
        let update = parse_update(body)?;
        let key = key_of(request);
        let slot = self.shadows.get(&key);
        let current_version = slot.map_or(0, |slot| slot.version_at(timestamp));
        if update.version.is_some_and(|v| v != current_version) {
            return Err(Rejection::new(409, MSG_VERSION_CONFLICT));
        }
        let previous = slot.and_then(|slot| slot.current.clone());
        let (mut state, mut metadata) = previous
            .as_ref()
            .map(|p| (p.state.clone(), p.metadata.clone()))
            .unwrap_or_default();
        for (section, patch) in &update.state {
            let mut section_state = take_object(state.remove(section));
            let mut section_meta = take_object(metadata.remove(section));
            if let Value::Object(patch) = patch {
                merge(&mut section_state, &mut section_meta, patch, timestamp);
                if !section_state.is_empty() {
                    state.insert(section.clone(), Value::Object(section_state));
                    metadata.insert(section.clone(), Value::Object(section_meta));
                }
            }
        }
        if serialized_len(&state) > MAX_STATE_BYTES {
            return Err(Rejection::new(413, MSG_TOO_LARGE));
        }
        let version = current_version.saturating_add(1);
        let current = StoredShadow {
            state,
            metadata,
            version,
            timestamp,
        };
        let responses = update_responses(request, &update, previous.as_ref(), &current);
        self.shadows.insert(
            key,
            ShadowSlot {
                current: Some(current),
                last_version: version,
                deleted_at: None,
            },
        );
        Ok(responses)
    }
}

/// `/update/accepted`, `/update/documents` and (when non-empty) `/update/delta`, in that order.
fn update_responses(
    request: &RequestTopic<'_>,
    update: &UpdateRequest,
    previous: Option<&StoredShadow>,
    current: &StoredShadow,
) -> Responses {
    let ts = current.timestamp;
    let accepted_meta: Map<String, Value> = update
        .state
        .iter()
        .map(|(section, patch)| (section.clone(), metadata_of(patch, ts)))
        .collect();
    let mut accepted = Map::new();
    accepted.insert("state".to_owned(), Value::Object(update.state.clone()));
    accepted.insert("metadata".to_owned(), Value::Object(accepted_meta));
    accepted.insert("version".to_owned(), Value::from(current.version));
    accepted.insert("timestamp".to_owned(), Value::from(ts));

    let mut documents = Map::new();
    documents.insert(
        "previous".to_owned(),
        previous.map_or(Value::Null, StoredShadow::snapshot),
    );
    documents.insert("current".to_owned(), current.snapshot());
    documents.insert("timestamp".to_owned(), Value::from(ts));

    let mut responses = vec![
        (request.response("accepted"), accepted),
        (request.response("documents"), documents),
    ];
    let delta = delta_of_sections(&current.state);
    if !delta.is_empty() {
        let desired_meta = current
            .metadata
            .get("desired")
            .cloned()
            .unwrap_or(Value::Null);
        let delta_meta = restrict(&desired_meta, &Value::Object(delta.clone()));
        let mut doc = Map::new();
        doc.insert("version".to_owned(), Value::from(current.version));
        doc.insert("timestamp".to_owned(), Value::from(ts));
        doc.insert("state".to_owned(), Value::Object(delta));
        doc.insert("metadata".to_owned(), delta_meta);
        responses.push((request.response("delta"), doc));
    }
    responses
}

fn key_of(request: &RequestTopic<'_>) -> ShadowKey {
    (request.thing.to_owned(), request.name.map(str::to_owned))
}

fn validate_names(request: &RequestTopic<'_>) -> Result<(), Rejection> {
    if request.thing.len() > MAX_THING_NAME_BYTES {
        return Err(Rejection::bad_request(MSG_INVALID_THING_NAME));
    }
    if request
        .name
        .is_some_and(|n| n.len() > MAX_SHADOW_NAME_BYTES)
    {
        return Err(Rejection::bad_request(MSG_INVALID_SHADOW_NAME));
    }
    Ok(())
}

/// 404 "No shadow exists with name: '<name>'": the thing name for a classic shadow, the shadow
/// name for a named one.
fn not_found(request: &RequestTopic<'_>) -> Rejection {
    let shown = request.name.unwrap_or(request.thing);
    Rejection::new(404, format!("No shadow exists with name: '{shown}'"))
}

/// The `…/rejected` message `{code, message, timestamp, clientToken?}`.
fn rejected(
    request: &RequestTopic<'_>,
    rejection: &Rejection,
    token: Option<&str>,
    timestamp: u64,
) -> Outbound {
    let mut doc = Map::new();
    doc.insert("code".to_owned(), Value::from(rejection.code));
    doc.insert(
        "message".to_owned(),
        Value::String(rejection.message.clone()),
    );
    doc.insert("timestamp".to_owned(), Value::from(timestamp));
    if let Some(token) = token {
        doc.insert("clientToken".to_owned(), Value::String(token.to_owned()));
    }
    Outbound::new(request.response("rejected"), encode(&Value::Object(doc)))
}

/// The request body as a JSON object; an empty (or all-whitespace) payload is an empty object.
fn parse_body(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    let text =
        std::str::from_utf8(payload).map_err(|_| Rejection::new(415, MSG_UNSUPPORTED_ENCODING))?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(body)) => Ok(body),
        _ => Err(Rejection::bad_request(MSG_INVALID_JSON)),
    }
}

/// The request's `clientToken`: absent or `null` is `None`; not a string or too long is a 400.
fn client_token(body: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match body.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) if token.len() <= MAX_CLIENT_TOKEN_BYTES => {
            Ok(Some(token.clone()))
        }
        Some(_) => Err(Rejection::bad_request(MSG_INVALID_CLIENT_TOKEN)),
    }
}

fn parse_update(body: &Map<String, Value>) -> Result<UpdateRequest, Rejection> {
    let version = match body.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| Rejection::bad_request(MSG_INVALID_VERSION))?,
        ),
        Some(_) => return Err(Rejection::bad_request(MSG_INVALID_VERSION)),
    };
    let state = match body.get("state") {
        None | Some(Value::Null) => return Err(Rejection::bad_request(MSG_MISSING_STATE)),
        Some(Value::Object(state)) => state,
        Some(_) => return Err(Rejection::bad_request(MSG_STATE_NOT_OBJECT)),
    };
    for (section, value) in state {
        let Some(label) = section_label(section) else {
            return Err(Rejection::bad_request(format!(
                "State contains an invalid node: '{section}'"
            )));
        };
        match value {
            Value::Null => {}
            Value::Object(_) => {
                if nesting_depth(value) > MAX_STATE_DEPTH {
                    return Err(Rejection::bad_request(MSG_TOO_DEEP));
                }
                if array_contains_null(value) {
                    return Err(Rejection::bad_request(MSG_ARRAY_NULL));
                }
            }
            _ => {
                return Err(Rejection::bad_request(format!(
                    "{label} node must be an object"
                )))
            }
        }
    }
    Ok(UpdateRequest {
        state: state.clone(),
        version,
    })
}

/// `Desired` / `Reported` for the two sections a `state` may hold, `None` for anything else.
fn section_label(section: &str) -> Option<&'static str> {
    match section {
        "desired" => Some("Desired"),
        "reported" => Some("Reported"),
        _ => None,
    }
}

/// Levels of objects/arrays in `value` (a scalar is 0, `{"a":1}` is 1).
fn nesting_depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(nesting_depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(nesting_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn array_contains_null(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|v| v.is_null() || array_contains_null(v)),
        Value::Object(map) => map.values().any(array_contains_null),
        _ => false,
    }
}

fn take_object(value: Option<Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// Deep-merges `patch` into `state` and its `metadata`: `null` deletes a key, objects merge
/// recursively, anything else (scalars, arrays) replaces the old value and its metadata.
fn merge(
    state: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    timestamp: u64,
) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                state.remove(key);
                metadata.remove(key);
            }
            Value::Object(sub_patch) => {
                // A scalar or array turned into an object starts with fresh metadata (its old
                // metadata is a leaf `{"timestamp"}` or an array, not a map of keys).
                let old_state = state.remove(key);
                let old_meta = metadata.remove(key);
                let (mut sub_state, mut sub_meta) = match old_state {
                    Some(Value::Object(map)) => (map, take_object(old_meta)),
                    _ => (Map::new(), Map::new()),
                };
                merge(&mut sub_state, &mut sub_meta, sub_patch, timestamp);
                state.insert(key.clone(), Value::Object(sub_state));
                metadata.insert(key.clone(), Value::Object(sub_meta));
            }
            _ => {
                state.insert(key.clone(), value.clone());
                metadata.insert(key.clone(), metadata_of(value, timestamp));
            }
        }
    }
}

/// AWS metadata mirroring `value`: objects recurse, arrays hold one entry per element, every
/// other value (including `null`) becomes `{"timestamp": timestamp}`.
fn metadata_of(value: &Value, timestamp: u64) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), metadata_of(v, timestamp)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| metadata_of(v, timestamp)).collect())
        }
        _ => json!({ "timestamp": timestamp }),
    }
}

/// The delta of a stored state: its `desired` section against its `reported` section.
fn delta_of_sections(state: &Map<String, Value>) -> Map<String, Value> {
    let empty = Map::new();
    let section = |name: &str| match state.get(name) {
        Some(Value::Object(map)) => map,
        _ => &empty,
    };
    delta(section("desired"), section("reported"))
}

/// The keys of `desired` whose values differ from `reported` (nested objects recurse, so only
/// the differing leaves of an object are kept; a key missing from `reported` is included).
fn delta(desired: &Map<String, Value>, reported: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, want) in desired {
        match (want, reported.get(key)) {
            (Value::Object(want_map), Some(Value::Object(have_map))) => {
                let sub = delta(want_map, have_map);
                if !sub.is_empty() {
                    out.insert(key.clone(), Value::Object(sub));
                }
            }
            (_, Some(have)) if json_equal(want, have) => {}
            _ => {
                out.insert(key.clone(), want.clone());
            }
        }
    }
    out
}

/// JSON value equality where numbers compare by value (`1` equals `1.0`) and `true` is not `1`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// The part of `metadata` that covers the keys of `shape` (a delta).
fn restrict(metadata: &Value, shape: &Value) -> Value {
    match (metadata, shape) {
        (Value::Object(meta), Value::Object(shape)) => Value::Object(
            shape
                .iter()
                .filter_map(|(k, v)| meta.get(k).map(|m| (k.clone(), restrict(m, v))))
                .collect(),
        ),
        _ => metadata.clone(),
    }
}

fn serialized_len(state: &Map<String, Value>) -> usize {
    serde_json::to_vec(state).map_or(usize::MAX, |bytes| bytes.len())
}

fn encode(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn epoch_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The fixed clock of every test, in epoch seconds.
    const TS: u64 = 1_700_000_000;
    const CLASSIC: &str = "$aws/things/lamp/shadow";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// Sends `request` (JSON, or an empty payload for `Value::Null`) to `<prefix>/<op>` and
    /// returns each response as (topic suffix after the prefix, decoded JSON).
    fn send_at(
        service: &mut ShadowService,
        prefix: &str,
        op: &str,
        request: &Value,
        seconds: u64,
    ) -> Vec<(String, Value)> {
        let payload = if request.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(request).unwrap()
        };
        let topic = format!("{prefix}/{op}");
        assert!(ShadowService::handles(&topic), "{topic}");
        service
            .handle(&topic, &payload, at(seconds))
            .into_iter()
            .map(|out| {
                let suffix = out
                    .topic
                    .strip_prefix(&format!("{prefix}/"))
                    .unwrap_or_else(|| panic!("response outside the shadow: {}", out.topic))
                    .to_owned();
                (suffix, serde_json::from_slice(&out.payload).unwrap())
            })
            .collect()
    }

    fn send(
        service: &mut ShadowService,
        prefix: &str,
        op: &str,
        request: &Value,
    ) -> Vec<(String, Value)> {
        send_at(service, prefix, op, request, TS)
    }

    fn ts() -> Value {
        json!({ "timestamp": TS })
    }

    /// One request of a documented scenario and the exact responses expected, in order.
    struct Step {
        op: &'static str,
        request: Value,
        expect: Vec<(&'static str, Value)>,
    }

    /// The examples of the AWS Developer Guide (device-shadow-document, device-shadow-data-flow,
    /// device-shadow-mqtt "/update/delta" rules), played against the classic shadow.
    fn documented_examples() -> Vec<(&'static str, Vec<Step>)> {
        vec![
            (
                "example document: desired RED + sequence, reported GREEN, then a delta",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}}, "clientToken": "app-1"}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                                "metadata": {"desired": {"color": ts(), "sequence": [ts(), ts(), ts()]}},
                                "version": 1, "timestamp": TS, "clientToken": "app-1"}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {
                                    "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                                    "metadata": {"desired": {"color": ts(), "sequence": [ts(), ts(), ts()]}},
                                    "version": 1},
                                "timestamp": TS, "clientToken": "app-1"}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                                "metadata": {"color": ts(), "sequence": [ts(), ts(), ts()]},
                                "version": 1, "timestamp": TS, "clientToken": "app-1"}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"color": "GREEN"}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"color": "GREEN"}},
                                "metadata": {"reported": {"color": ts()}},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {
                                    "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                                    "metadata": {"desired": {"color": ts(), "sequence": [ts(), ts(), ts()]}},
                                    "version": 1},
                                "current": {
                                    "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                                              "reported": {"color": "GREEN"}},
                                    "metadata": {"desired": {"color": ts(), "sequence": [ts(), ts(), ts()]},
                                                 "reported": {"color": ts()}},
                                    "version": 2},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                                "metadata": {"color": ts(), "sequence": [ts(), ts(), ts()]},
                                "version": 2, "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "get",
                        request: json!({"clientToken": "get-1"}),
                        expect: vec![(
                            "get/accepted",
                            json!({
                            "state": {
                                "desired": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]},
                                "reported": {"color": "GREEN"},
                                "delta": {"color": "RED", "sequence": ["RED", "GREEN", "BLUE"]}},
                            "metadata": {"desired": {"color": ts(), "sequence": [ts(), ts(), ts()]},
                                         "reported": {"color": ts()}},
                            "version": 2, "timestamp": TS, "clientToken": "get-1"}),
                        )],
                    },
                ],
            ),
            (
                "data flow: the device reports the desired state, so no delta is published",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"color": {"r": 10}, "engine": "ON"}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"desired": {"color": {"r": 10}, "engine": "ON"}},
                                "metadata": {"desired": {"color": {"r": ts()}, "engine": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {"state": {"desired": {"color": {"r": 10}, "engine": "ON"}},
                                            "metadata": {"desired": {"color": {"r": ts()}, "engine": ts()}},
                                            "version": 1},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"color": {"r": 10}, "engine": "ON"},
                                "metadata": {"color": {"r": ts()}, "engine": ts()},
                                "version": 1, "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"color": {"r": 10}, "engine": "ON"}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"color": {"r": 10}, "engine": "ON"}},
                                "metadata": {"reported": {"color": {"r": ts()}, "engine": ts()}},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {"state": {"desired": {"color": {"r": 10}, "engine": "ON"}},
                                             "metadata": {"desired": {"color": {"r": ts()}, "engine": ts()}},
                                             "version": 1},
                                "current": {"state": {"desired": {"color": {"r": 10}, "engine": "ON"},
                                                      "reported": {"color": {"r": 10}, "engine": "ON"}},
                                            "metadata": {"desired": {"color": {"r": ts()}, "engine": ts()},
                                                         "reported": {"color": {"r": ts()}, "engine": ts()}},
                                            "version": 2},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                ],
            ),
            (
                "delta rules: nested differences only, reported-only keys excluded",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {
                            "reported": {"lights": {"color": "GREEN", "level": 3}, "engine": "ON", "temp": 20},
                            "desired": {"lights": {"color": "RED", "level": 3}, "engine": "ON"}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {
                                    "reported": {"lights": {"color": "GREEN", "level": 3}, "engine": "ON", "temp": 20},
                                    "desired": {"lights": {"color": "RED", "level": 3}, "engine": "ON"}},
                                "metadata": {
                                    "reported": {"lights": {"color": ts(), "level": ts()}, "engine": ts(), "temp": ts()},
                                    "desired": {"lights": {"color": ts(), "level": ts()}, "engine": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {
                                    "state": {
                                        "reported": {"lights": {"color": "GREEN", "level": 3}, "engine": "ON", "temp": 20},
                                        "desired": {"lights": {"color": "RED", "level": 3}, "engine": "ON"}},
                                    "metadata": {
                                        "reported": {"lights": {"color": ts(), "level": ts()}, "engine": ts(), "temp": ts()},
                                        "desired": {"lights": {"color": ts(), "level": ts()}, "engine": ts()}},
                                    "version": 1},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"lights": {"color": "RED"}},
                                "metadata": {"lights": {"color": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        // "If an attribute is deleted from the reported section but still exists in
                        // the desired section, it is included."
                        op: "update",
                        request: json!({"state": {"reported": {"engine": null}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"engine": null}},
                                "metadata": {"reported": {"engine": ts()}},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {
                                    "state": {
                                        "reported": {"lights": {"color": "GREEN", "level": 3}, "engine": "ON", "temp": 20},
                                        "desired": {"lights": {"color": "RED", "level": 3}, "engine": "ON"}},
                                    "metadata": {
                                        "reported": {"lights": {"color": ts(), "level": ts()}, "engine": ts(), "temp": ts()},
                                        "desired": {"lights": {"color": ts(), "level": ts()}, "engine": ts()}},
                                    "version": 1},
                                "current": {
                                    "state": {
                                        "reported": {"lights": {"color": "GREEN", "level": 3}, "temp": 20},
                                        "desired": {"lights": {"color": "RED", "level": 3}, "engine": "ON"}},
                                    "metadata": {
                                        "reported": {"lights": {"color": ts(), "level": ts()}, "temp": ts()},
                                        "desired": {"lights": {"color": ts(), "level": ts()}, "engine": ts()}},
                                    "version": 2},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"lights": {"color": "RED"}, "engine": "ON"},
                                "metadata": {"lights": {"color": ts()}, "engine": ts()},
                                "version": 2, "timestamp": TS}),
                            ),
                        ],
                    },
                ],
            ),
            (
                "optimistic locking: version 9 conflicts, the current version is accepted",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}},
                                "metadata": {"desired": {"colors": [ts(), ts(), ts()]}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}},
                                            "metadata": {"desired": {"colors": [ts(), ts(), ts()]}},
                                            "version": 1},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"colors": ["RED", "GREEN", "BLUE"]},
                                "metadata": {"colors": [ts(), ts(), ts()]},
                                "version": 1, "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 9,
                                        "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"}),
                        expect: vec![(
                            "update/rejected",
                            json!({
                            "code": 409, "message": "Version conflict", "timestamp": TS,
                            "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"}),
                        )],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 1}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"desired": {"colors": ["BLUE"]}},
                                "metadata": {"desired": {"colors": [ts()]}},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}},
                                             "metadata": {"desired": {"colors": [ts(), ts(), ts()]}},
                                             "version": 1},
                                "current": {"state": {"desired": {"colors": ["BLUE"]}},
                                            "metadata": {"desired": {"colors": [ts()]}},
                                            "version": 2},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"colors": ["BLUE"]},
                                "metadata": {"colors": [ts()]},
                                "version": 2, "timestamp": TS}),
                            ),
                        ],
                    },
                ],
            ),
            (
                "empty sections: desired null removes the section, the delta disappears",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"desired": {"color": "red"}, "reported": {"color": "green"}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"desired": {"color": "red"}, "reported": {"color": "green"}},
                                "metadata": {"desired": {"color": ts()}, "reported": {"color": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {"state": {"desired": {"color": "red"}, "reported": {"color": "green"}},
                                            "metadata": {"desired": {"color": ts()}, "reported": {"color": ts()}},
                                            "version": 1},
                                "timestamp": TS}),
                            ),
                            (
                                "update/delta",
                                json!({
                                "state": {"color": "red"}, "metadata": {"color": ts()},
                                "version": 1, "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"color": "red"}, "desired": null}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"color": "red"}, "desired": null},
                                "metadata": {"reported": {"color": ts()}, "desired": ts()},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {"state": {"desired": {"color": "red"}, "reported": {"color": "green"}},
                                             "metadata": {"desired": {"color": ts()}, "reported": {"color": ts()}},
                                             "version": 1},
                                "current": {"state": {"reported": {"color": "red"}},
                                            "metadata": {"reported": {"color": ts()}},
                                            "version": 2},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "get",
                        request: Value::Null,
                        expect: vec![(
                            "get/accepted",
                            json!({
                            "state": {"reported": {"color": "red"}},
                            "metadata": {"reported": {"color": ts()}},
                            "version": 2, "timestamp": TS}),
                        )],
                    },
                ],
            ),
            (
                "deleting a property with null, and the emptied section disappearing",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"engine": "ON", "speed": 3}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"engine": "ON", "speed": 3}},
                                "metadata": {"reported": {"engine": ts(), "speed": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {"state": {"reported": {"engine": "ON", "speed": 3}},
                                            "metadata": {"reported": {"engine": ts(), "speed": ts()}},
                                            "version": 1},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"engine": null}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"engine": null}},
                                "metadata": {"reported": {"engine": ts()}},
                                "version": 2, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {"state": {"reported": {"engine": "ON", "speed": 3}},
                                             "metadata": {"reported": {"engine": ts(), "speed": ts()}},
                                             "version": 1},
                                "current": {"state": {"reported": {"speed": 3}},
                                            "metadata": {"reported": {"speed": ts()}},
                                            "version": 2},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"speed": null}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"speed": null}},
                                "metadata": {"reported": {"speed": ts()}},
                                "version": 3, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": {"state": {"reported": {"speed": 3}},
                                             "metadata": {"reported": {"speed": ts()}},
                                             "version": 2},
                                "current": {"state": {}, "metadata": {}, "version": 3},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "get",
                        request: Value::Null,
                        expect: vec![(
                            "get/accepted",
                            json!({
                            "state": {}, "metadata": {}, "version": 3, "timestamp": TS}),
                        )],
                    },
                ],
            ),
            (
                "delete: the abbreviated accepted document, then 404",
                vec![
                    Step {
                        op: "update",
                        request: json!({"state": {"reported": {"on": true}}}),
                        expect: vec![
                            (
                                "update/accepted",
                                json!({
                                "state": {"reported": {"on": true}},
                                "metadata": {"reported": {"on": ts()}},
                                "version": 1, "timestamp": TS}),
                            ),
                            (
                                "update/documents",
                                json!({
                                "previous": null,
                                "current": {"state": {"reported": {"on": true}},
                                            "metadata": {"reported": {"on": ts()}}, "version": 1},
                                "timestamp": TS}),
                            ),
                        ],
                    },
                    Step {
                        op: "delete",
                        request: json!({"clientToken": "del-1"}),
                        expect: vec![(
                            "delete/accepted",
                            json!({"version": 1, "timestamp": TS, "clientToken": "del-1"}),
                        )],
                    },
                    Step {
                        op: "get",
                        request: json!({"clientToken": "get-2"}),
                        expect: vec![(
                            "get/rejected",
                            json!({
                            "code": 404, "message": "No shadow exists with name: 'lamp'",
                            "timestamp": TS, "clientToken": "get-2"}),
                        )],
                    },
                    Step {
                        op: "delete",
                        request: Value::Null,
                        expect: vec![(
                            "delete/rejected",
                            json!({
                            "code": 404, "message": "No shadow exists with name: 'lamp'", "timestamp": TS}),
                        )],
                    },
                ],
            ),
        ]
    }

    #[test]
    fn documented_examples_produce_the_documented_responses() {
        for (name, steps) in documented_examples() {
            let mut service = ShadowService::new();
            for (index, step) in steps.into_iter().enumerate() {
                let got = send(&mut service, CLASSIC, step.op, &step.request);
                let want: Vec<(String, Value)> = step
                    .expect
                    .into_iter()
                    .map(|(suffix, doc)| (suffix.to_owned(), doc))
                    .collect();
                assert_eq!(got, want, "example {name:?}, step {index}");
            }
        }
    }

    /// The single `…/update/rejected` answer to `request` on a fresh classic shadow.
    fn update_rejection(service: &mut ShadowService, payload: &[u8]) -> Value {
        let out = service.handle(&format!("{CLASSIC}/update"), payload, at(TS));
        assert_eq!(out.len(), 1, "expected one response");
        assert_eq!(out[0].topic, format!("{CLASSIC}/update/rejected"));
        serde_json::from_slice(&out[0].payload).unwrap()
    }

    fn rejection(code: u16, message: &str, token: Option<&str>) -> Value {
        let mut doc = json!({"code": code, "message": message, "timestamp": TS});
        if let Some(token) = token {
            doc["clientToken"] = json!(token);
        }
        doc
    }

    #[test]
    fn malformed_update_requests_are_rejected_like_aws() {
        let long_token = "x".repeat(65);
        let cases: Vec<(Vec<u8>, Value)> = vec![
            (
                b"{not json".to_vec(),
                rejection(400, "Payload contains invalid json", None),
            ),
            (
                b"[1,2]".to_vec(),
                rejection(400, "Payload contains invalid json", None),
            ),
            (
                b"\xff\xfe".to_vec(),
                rejection(415, MSG_UNSUPPORTED_ENCODING, None),
            ),
            (
                b"".to_vec(),
                rejection(400, "Missing required node: state", None),
            ),
            (
                br#"{"clientToken":"c1"}"#.to_vec(),
                rejection(400, "Missing required node: state", Some("c1")),
            ),
            (
                br#"{"state":null,"clientToken":"c1"}"#.to_vec(),
                rejection(400, "Missing required node: state", Some("c1")),
            ),
            (
                br#"{"state":"on","clientToken":"c1"}"#.to_vec(),
                rejection(400, "State node must be an object", Some("c1")),
            ),
            (
                br#"{"state":{"desired":5}}"#.to_vec(),
                rejection(400, "Desired node must be an object", None),
            ),
            (
                br#"{"state":{"reported":[1]}}"#.to_vec(),
                rejection(400, "Reported node must be an object", None),
            ),
            (
                br#"{"state":{"delta":{"a":1}}}"#.to_vec(),
                rejection(400, "State contains an invalid node: 'delta'", None),
            ),
            (
                br#"{"state":{"desired":{"colors":[null,"RED"]}}}"#.to_vec(),
                rejection(400, "Invalid JSON", None),
            ),
            (
                br#"{"state":{"desired":{"a":{"b":[["x",null]]}}}}"#.to_vec(),
                rejection(400, "Invalid JSON", None),
            ),
            (
                br#"{"state":{"desired":{}},"version":"1"}"#.to_vec(),
                rejection(400, "Invalid version", None),
            ),
            (
                br#"{"state":{"desired":{}},"version":1.5}"#.to_vec(),
                rejection(400, "Invalid version", None),
            ),
            (
                br#"{"state":{"desired":{}},"version":-1}"#.to_vec(),
                rejection(400, "Invalid version", None),
            ),
            (
                br#"{"state":{"desired":{}},"clientToken":7}"#.to_vec(),
                rejection(400, "Invalid clientToken", None),
            ),
            (
                format!(r#"{{"state":{{"desired":{{}}}},"clientToken":"{long_token}"}}"#)
                    .into_bytes(),
                rejection(400, "Invalid clientToken", None),
            ),
        ];
        for (payload, want) in cases {
            let mut service = ShadowService::new();
            let got = update_rejection(&mut service, &payload);
            assert_eq!(got, want, "payload {:?}", String::from_utf8_lossy(&payload));
            assert_eq!(
                service.document("lamp", None),
                None,
                "a rejected update creates nothing"
            );
        }
    }

    #[test]
    fn a_64_byte_client_token_is_accepted_and_echoed() {
        let mut service = ShadowService::new();
        let token = "t".repeat(64);
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"a": 1}}, "clientToken": token}),
        );
        assert_eq!(out[0].0, "update/accepted");
        assert_eq!(out[0].1["clientToken"], json!(token));
        assert_eq!(
            out[1].1["clientToken"],
            json!(token),
            "documents echo the token"
        );
    }

    #[test]
    fn unknown_top_level_keys_are_ignored() {
        let mut service = ShadowService::new();
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"a": 1}}, "extra": {"b": 2}}),
        );
        assert_eq!(out[0].0, "update/accepted");
        assert_eq!(out[0].1.get("extra"), None);
    }

    /// A `desired` section nested `levels` deep (the section object is level 1).
    fn nested(levels: usize) -> Value {
        let mut value = json!(1);
        for _ in 0..levels {
            value = json!({ "k": value });
        }
        value
    }

    #[test]
    fn nesting_is_limited_to_six_levels_inside_a_section() {
        assert_eq!(nesting_depth(&nested(6)), 6);
        let mut service = ShadowService::new();
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"desired": nested(6)}}),
        );
        assert_eq!(out[0].0, "update/accepted");

        let deep = json!({"state": {"reported": nested(7)}, "clientToken": "deep"});
        let got = update_rejection(&mut service, &serde_json::to_vec(&deep).unwrap());
        assert_eq!(
            got,
            rejection(
                400,
                "JSON contains too many levels of nesting; maximum is 6",
                Some("deep")
            )
        );

        // Arrays count as levels too.
        let arrays = json!({"state": {"reported": {"a": [[[[[[1]]]]]]}}});
        let got = update_rejection(&mut service, &serde_json::to_vec(&arrays).unwrap());
        assert_eq!(got["code"], json!(400));
        assert_eq!(service.document("lamp", None).unwrap()["version"], json!(1));
    }

    #[test]
    fn absurdly_deep_json_is_rejected_without_overflowing_the_stack() {
        let mut service = ShadowService::new();
        let payload = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let got = update_rejection(&mut service, payload.as_bytes());
        assert_eq!(got, rejection(400, "Payload contains invalid json", None));
    }

    /// `{"state":{"desired":{"v":"xxx…"}}}` whose stored state serializes to exactly `bytes`.
    fn update_of_state_size(bytes: usize) -> Value {
        let overhead = serde_json::to_vec(&json!({"desired": {"v": ""}}))
            .unwrap()
            .len();
        json!({"state": {"desired": {"v": "x".repeat(bytes - overhead)}}})
    }

    #[test]
    fn state_up_to_8_kib_is_accepted_and_larger_is_413() {
        let mut service = ShadowService::new();
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &update_of_state_size(MAX_STATE_BYTES),
        );
        assert_eq!(out[0].0, "update/accepted");

        let mut service = ShadowService::new();
        let request = serde_json::to_vec(&update_of_state_size(MAX_STATE_BYTES + 1)).unwrap();
        let got = update_rejection(&mut service, &request);
        assert_eq!(
            got,
            rejection(413, "The payload exceeds the maximum size allowed", None)
        );
    }

    #[test]
    fn the_size_limit_applies_to_the_merged_state_and_metadata_does_not_count() {
        let mut service = ShadowService::new();
        // Many keys: metadata is far larger than the state, which stays under the limit.
        let keys: Map<String, Value> = (0..300).map(|i| (format!("k{i}"), json!(1))).collect();
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": keys}}),
        );
        assert_eq!(out[0].0, "update/accepted");
        let stored = service.document("lamp", None).unwrap();
        assert!(stored["metadata"].to_string().len() > MAX_STATE_BYTES);

        // Each request is small, but the merged state would exceed 8 KiB.
        let big = json!({"state": {"desired": {"blob": "y".repeat(4000)}}});
        assert_eq!(
            send(&mut service, CLASSIC, "update", &big)[0].0,
            "update/accepted"
        );
        let more = json!({"state": {"desired": {"blob2": "z".repeat(4000)}}, "clientToken": "c"});
        let got = update_rejection(&mut service, &serde_json::to_vec(&more).unwrap());
        assert_eq!(
            got,
            rejection(
                413,
                "The payload exceeds the maximum size allowed",
                Some("c")
            )
        );
        let stored = service.document("lamp", None).unwrap();
        assert_eq!(
            stored["version"],
            json!(2),
            "the rejected update changed nothing"
        );
        assert_eq!(stored["state"]["desired"].get("blob2"), None);
    }

    #[test]
    fn get_of_a_missing_shadow_is_404_with_the_shadow_name() {
        let mut service = ShadowService::new();
        let got = send(&mut service, CLASSIC, "get", &Value::Null);
        assert_eq!(
            got,
            vec![(
                "get/rejected".to_owned(),
                rejection(404, "No shadow exists with name: 'lamp'", None)
            )]
        );

        let named = "$aws/things/lamp/shadow/name/config";
        let got = send(&mut service, named, "get", &json!({"clientToken": "g"}));
        assert_eq!(
            got,
            vec![(
                "get/rejected".to_owned(),
                rejection(404, "No shadow exists with name: 'config'", Some("g"))
            )]
        );
    }

    #[test]
    fn get_with_invalid_json_is_rejected() {
        let mut service = ShadowService::new();
        let out = service.handle(&format!("{CLASSIC}/get"), b"{", at(TS));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, format!("{CLASSIC}/get/rejected"));
        let doc: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(doc, rejection(400, "Payload contains invalid json", None));
    }

    #[test]
    fn delete_ignores_the_payload_content() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"a": 1}}}),
        );
        let out = service.handle(&format!("{CLASSIC}/delete"), b"not json at all", at(TS));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, format!("{CLASSIC}/delete/accepted"));
        let doc: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(doc, json!({"version": 1, "timestamp": TS}));
    }

    #[test]
    fn delete_with_an_invalid_client_token_still_deletes_without_echoing_it() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"a": 1}}}),
        );
        let request = json!({"clientToken": "x".repeat(65)});
        let got = send(&mut service, CLASSIC, "delete", &request);
        assert_eq!(
            got,
            vec![(
                "delete/accepted".to_owned(),
                json!({"version": 1, "timestamp": TS})
            )]
        );
        assert_eq!(service.document("lamp", None), None);
    }

    #[test]
    fn named_shadows_are_isolated_from_the_classic_shadow_and_each_other() {
        let mut service = ShadowService::new();
        let config = "$aws/things/lamp/shadow/name/config";
        let firmware = "$aws/things/lamp/shadow/name/firmware";
        let out = send(
            &mut service,
            config,
            "update",
            &json!({"state": {"desired": {"mode": "eco"}}}),
        );
        let suffixes: Vec<&str> = out.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            suffixes,
            ["update/accepted", "update/documents", "update/delta"]
        );
        send(
            &mut service,
            firmware,
            "update",
            &json!({"state": {"reported": {"fw": "1.0"}}}),
        );
        send(
            &mut service,
            firmware,
            "update",
            &json!({"state": {"reported": {"fw": "1.1"}}}),
        );

        assert_eq!(service.document("lamp", None), None);
        assert_eq!(service.document("other", Some("config")), None);
        assert_eq!(
            service.document("lamp", Some("config")).unwrap()["version"],
            json!(1)
        );
        assert_eq!(
            service.document("lamp", Some("firmware")).unwrap()["version"],
            json!(2)
        );
        assert_eq!(
            send(&mut service, CLASSIC, "get", &Value::Null)[0].0,
            "get/rejected"
        );

        let got = send(&mut service, config, "get", &Value::Null);
        assert_eq!(
            got,
            vec![(
                "get/accepted".to_owned(),
                json!({
            "state": {"desired": {"mode": "eco"}, "delta": {"mode": "eco"}},
            "metadata": {"desired": {"mode": ts()}},
            "version": 1, "timestamp": TS})
            )]
        );

        assert_eq!(
            send(&mut service, config, "delete", &Value::Null)[0].0,
            "delete/accepted"
        );
        assert_eq!(service.document("lamp", Some("config")), None);
        assert!(service.document("lamp", Some("firmware")).is_some());
    }

    #[test]
    fn delete_then_update_continues_the_version() {
        let mut service = ShadowService::new();
        for _ in 0..3 {
            send(
                &mut service,
                CLASSIC,
                "update",
                &json!({"state": {"reported": {"n": 1}}}),
            );
        }
        let deleted = send(&mut service, CLASSIC, "delete", &Value::Null);
        assert_eq!(deleted[0].1["version"], json!(3));

        // The version check uses the kept counter.
        let conflict = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 2}}, "version": 0}),
        );
        assert_eq!(conflict[0].0, "update/rejected");
        assert_eq!(conflict[0].1["code"], json!(409));

        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 2}}, "version": 3}),
        );
        assert_eq!(out[0].0, "update/accepted");
        assert_eq!(out[0].1["version"], json!(4));
        assert_eq!(
            out[1].1["previous"],
            Value::Null,
            "the deleted shadow is not the previous one"
        );
        assert_eq!(out[1].1["current"]["state"], json!({"reported": {"n": 2}}));
    }

    #[test]
    fn a_shadow_recreated_more_than_48_hours_after_deletion_starts_again() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 1}}}),
        );
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 2}}}),
        );
        send(&mut service, CLASSIC, "delete", &Value::Null);

        let within = TS + DELETED_VERSION_RETENTION_SECS;
        let mut copy = ShadowService {
            shadows: service.shadows.clone(),
        };
        let out = send_at(
            &mut copy,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 3}}}),
            within,
        );
        assert_eq!(out[0].1["version"], json!(3));

        let later = TS + DELETED_VERSION_RETENTION_SECS + 1;
        let out = send_at(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"n": 3}}}),
            later,
        );
        assert_eq!(out[0].1["version"], json!(1));
        assert_eq!(out[0].1["timestamp"], json!(later));
    }

    #[test]
    fn every_accepted_update_increments_the_version_and_resends_a_pending_delta() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"desired": {"on": true}}}),
        );
        // An update that changes nothing still counts, and the delta is still pending.
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"other": 1}}}),
        );
        let suffixes: Vec<&str> = out.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            suffixes,
            ["update/accepted", "update/documents", "update/delta"]
        );
        assert_eq!(out[2].1["state"], json!({"on": true}));
        assert_eq!(out[2].1["version"], json!(2));
        let out = send(&mut service, CLASSIC, "update", &json!({"state": {}}));
        assert_eq!(out[0].1["version"], json!(3));
        assert_eq!(out[0].1["state"], json!({}));
    }

    #[test]
    fn merging_replaces_arrays_and_scalars_and_recurses_into_objects() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {
            "colors": ["RED", "GREEN", "BLUE"], "cfg": {"a": 1, "b": {"c": 2}}, "x": 5}}}),
        );
        send_at(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {
            "colors": ["RED"], "cfg": {"b": {"d": 3}}, "x": {"y": 1}}}}),
            TS + 10,
        );
        let doc = service.document("lamp", None).unwrap();
        assert_eq!(
            doc["state"],
            json!({"reported": {
            "colors": ["RED"], "cfg": {"a": 1, "b": {"c": 2, "d": 3}}, "x": {"y": 1}}})
        );
        let later = json!({"timestamp": TS + 10});
        assert_eq!(
            doc["metadata"],
            json!({"reported": {
            "colors": [later], "cfg": {"a": ts(), "b": {"c": ts(), "d": later}}, "x": {"y": later}}})
        );
        assert_eq!(doc["timestamp"], json!(TS + 10));
    }

    #[test]
    fn numbers_that_are_equal_in_value_make_no_delta_but_true_is_not_1() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"reported": {"t": 1, "on": 1}}}),
        );
        let out = send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"desired": {"t": 1.0, "on": true}}}),
        );
        assert_eq!(out.last().unwrap().0, "update/delta");
        assert_eq!(out.last().unwrap().1["state"], json!({"on": true}));
    }

    #[test]
    fn overlong_thing_and_shadow_names_are_rejected() {
        let mut service = ShadowService::new();
        let request = json!({"state": {"reported": {"a": 1}}, "clientToken": "n"});
        let ok_thing = "t".repeat(MAX_THING_NAME_BYTES);
        let out = send(
            &mut service,
            &format!("$aws/things/{ok_thing}/shadow"),
            "update",
            &request,
        );
        assert_eq!(out[0].0, "update/accepted");

        let long_thing = format!(
            "$aws/things/{}/shadow",
            "t".repeat(MAX_THING_NAME_BYTES + 1)
        );
        let out = send(&mut service, &long_thing, "update", &request);
        assert_eq!(
            out,
            vec![(
                "update/rejected".to_owned(),
                rejection(400, "Invalid thing name", Some("n"))
            )]
        );

        let ok_name = format!(
            "$aws/things/lamp/shadow/name/{}",
            "s".repeat(MAX_SHADOW_NAME_BYTES)
        );
        assert_eq!(
            send(&mut service, &ok_name, "update", &request)[0].0,
            "update/accepted"
        );
        let long_name = format!(
            "$aws/things/lamp/shadow/name/{}",
            "s".repeat(MAX_SHADOW_NAME_BYTES + 1)
        );
        let out = send(&mut service, &long_name, "get", &Value::Null);
        assert_eq!(
            out,
            vec![(
                "get/rejected".to_owned(),
                rejection(400, "Invalid shadow name", None)
            )]
        );
    }

    #[test]
    fn handles_only_shadow_request_topics() {
        for topic in [
            "$aws/things/t/shadow/get",
            "$aws/things/t/shadow/update",
            "$aws/things/t/shadow/delete",
            "$aws/things/t/shadow/name/n/get",
            "$aws/things/t/shadow/name/n/update",
            "$aws/things/t/shadow/name/n/delete",
            "$aws/things/shadow/shadow/name/name/update",
        ] {
            assert!(ShadowService::handles(topic), "{topic}");
        }
        for topic in [
            "$aws/things/t/shadow/update/accepted",
            "$aws/things/t/shadow/update/delta",
            "$aws/things/t/shadow/name/n/update/documents",
            "$aws/things/t/shadow/name/update",
            "$aws/things/t/shadow/list",
            "$aws/things//shadow/get",
            "$aws/things/t/shadow/name//get",
            "$aws/things/t/jobs/get",
            "aws/things/t/shadow/get",
            "things/t/shadow/get",
            "",
        ] {
            assert!(!ShadowService::handles(topic), "{topic}");
            assert!(ShadowService::new().handle(topic, b"{}", at(TS)).is_empty());
        }
    }

    #[test]
    fn timestamps_are_epoch_seconds_from_now() {
        let mut service = ShadowService::new();
        let now = UNIX_EPOCH + Duration::from_millis(1_234_567_890_999);
        let out = service.handle(
            &format!("{CLASSIC}/update"),
            br#"{"state":{"reported":{"a":1}}}"#,
            now,
        );
        let doc: Value = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!(doc["timestamp"], json!(1_234_567_890u64));
        assert_eq!(
            doc["metadata"]["reported"]["a"]["timestamp"],
            json!(1_234_567_890u64)
        );
        assert_eq!(epoch_seconds(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn document_is_the_get_document_without_client_token() {
        let mut service = ShadowService::new();
        send(
            &mut service,
            CLASSIC,
            "update",
            &json!({"state": {"desired": {"a": 1}, "reported": {"a": 2}}, "clientToken": "c"}),
        );
        let doc = service.document("lamp", None).unwrap();
        assert_eq!(
            doc,
            json!({
            "state": {"desired": {"a": 1}, "reported": {"a": 2}, "delta": {"a": 1}},
            "metadata": {"desired": {"a": ts()}, "reported": {"a": ts()}},
            "version": 1, "timestamp": TS})
        );
    }
}
