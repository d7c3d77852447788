//! The AWS IoT Jobs device MQTT API (reference E6): `GetPendingJobExecutions`,
//! `StartNextPendingJobExecution`, `DescribeJobExecution` and `UpdateJobExecution` under
//! `$aws/things/<thing>/jobs/`, with the `notify` (JobExecutionsChanged) and `notify-next`
//! (NextJobExecutionChanged) messages.
//!
//! Sans-IO: the broker hands every PUBLISH on a request topic to [`JobsService::handle`] and
//! publishes the [`Outbound`]s it returns (`<request topic>/accepted|rejected`, then any
//! notifications). Jobs are queued by the core ([`JobsService::add_job`]), not by devices.
//!
//! Semantics (AWS's jobs-api / jobs-workflow pages):
//! - Executions start `QUEUED` with `versionNumber` 1 and `executionNumber` 1; every accepted
//!   change adds 1 to `versionNumber`. The pending list is `IN_PROGRESS` then `QUEUED`, each in
//!   the order the jobs were added; the first is `$next`.
//! - `notify` is published when an execution enters or leaves the pending list, `notify-next`
//!   when the id of the next pending execution changes (not when only its details change).
//! - Devices may set `IN_PROGRESS`, `SUCCEEDED`, `FAILED` or `REJECTED`; an execution in a
//!   terminal state cannot change (`InvalidStateTransition`), and describing it answers
//!   `TerminalStateReached`.
//! - Rejections are `{code, message, timestamp, clientToken?, executionState?}`; a string
//!   `clientToken` is echoed in every answer. Timestamps are epoch seconds.
//!
//! Left out: step timeouts (`stepTimeoutInMinutes` is accepted and ignored, so `TIMED_OUT` is
//! never reached), job-level rollouts, aborts and retries (`executionNumber` stays 1), request
//! throttling.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::local::service::Outbound;

/// Largest job document accepted by [`JobsService::add_job`] (AWS: 32 KB).
pub const MAX_JOB_DOCUMENT_BYTES: usize = 32 * 1024;

/// Longest job id AWS accepts.
const MAX_JOB_ID: usize = 64;

/// Longest thing name AWS accepts.
const MAX_THING_NAME: usize = 128;

/// Longest `clientToken` AWS accepts on the jobs API.
const MAX_CLIENT_TOKEN: usize = 64;

/// The job id that names the next pending execution in `DescribeJobExecution`.
const NEXT: &str = "$next";

/// The status of one job execution. `TIMED_OUT` and `REMOVED` are never reached here (no
/// step timeouts, no job deletion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Queued,
    InProgress,
    Succeeded,
    Failed,
    Rejected,
    Canceled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::InProgress => "IN_PROGRESS",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Rejected => "REJECTED",
            Self::Canceled => "CANCELED",
        }
    }

    /// The statuses a device may set with `UpdateJobExecution`.
    fn settable_by_device(name: &str) -> Option<Self> {
        match name {
            "IN_PROGRESS" => Some(Self::InProgress),
            "SUCCEEDED" => Some(Self::Succeeded),
            "FAILED" => Some(Self::Failed),
            "REJECTED" => Some(Self::Rejected),
            _ => None,
        }
    }

    fn is_pending(self) -> bool {
        matches!(self, Self::Queued | Self::InProgress)
    }
}

/// One job execution of one thing.
#[derive(Debug, Clone)]
struct Execution {
    job_id: String,
    thing: String,
    document: Value,
    status: Status,
    status_details: Option<Map<String, Value>>,
    queued_at: u64,
    started_at: Option<u64>,
    last_updated_at: u64,
    version_number: u64,
    execution_number: u64,
}

impl Execution {
    /// JobExecutionSummary, as in `get` answers and `notify`.
    fn summary(&self) -> Value {
        let mut out = Map::new();
        out.insert("jobId".into(), json!(self.job_id));
        out.insert("queuedAt".into(), json!(self.queued_at));
        if let Some(started_at) = self.started_at {
            out.insert("startedAt".into(), json!(started_at));
        }
        out.insert("lastUpdatedAt".into(), json!(self.last_updated_at));
        out.insert("versionNumber".into(), json!(self.version_number));
        out.insert("executionNumber".into(), json!(self.execution_number));
        Value::Object(out)
    }

    /// JobExecutionState, as in update answers and `VersionMismatch` rejections.
    fn state(&self) -> Value {
        let mut out = Map::new();
        out.insert("status".into(), json!(self.status.as_str()));
        if let Some(details) = &self.status_details {
            out.insert("statusDetails".into(), Value::Object(details.clone()));
        }
        out.insert("versionNumber".into(), json!(self.version_number));
        Value::Object(out)
    }

    /// JobExecution, as in `start-next`, describe and `notify-next`.
    fn full(&self, include_document: bool) -> Value {
        let mut out = Map::new();
        out.insert("jobId".into(), json!(self.job_id));
        out.insert("thingName".into(), json!(self.thing));
        if include_document {
            out.insert("jobDocument".into(), self.document.clone());
        }
        out.insert("status".into(), json!(self.status.as_str()));
        if let Some(details) = &self.status_details {
            out.insert("statusDetails".into(), Value::Object(details.clone()));
        }
        out.insert("queuedAt".into(), json!(self.queued_at));
        if let Some(started_at) = self.started_at {
            out.insert("startedAt".into(), json!(started_at));
        }
        out.insert("lastUpdatedAt".into(), json!(self.last_updated_at));
        out.insert("versionNumber".into(), json!(self.version_number));
        out.insert("executionNumber".into(), json!(self.execution_number));
        Value::Object(out)
    }
}

/// The jobs of every thing: each thing's executions in the order they were queued.
#[derive(Debug, Default)]
pub struct JobsService {
    things: HashMap<String, Vec<Execution>>,
}

/// One request, parsed from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation<'a> {
    GetPending,
    StartNext,
    Describe(&'a str),
    Update(&'a str),
}

/// A `/rejected` answer.
#[derive(Debug)]
struct Rejection {
    code: &'static str,
    message: String,
    execution_state: Option<Value>,
}

impl Rejection {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            execution_state: None,
        }
    }

    fn with_state(mut self, execution: &Execution) -> Self {
        self.execution_state = Some(execution.state());
        self
    }

    fn invalid_request(message: impl Into<String>) -> Self {
        Self::new("InvalidRequest", message)
    }

    fn not_found(job_id: &str, thing: &str) -> Self {
        Self::new(
            "ResourceNotFound",
            format!("Job execution for job {job_id} and thing {thing} not found"),
        )
    }
}

/// What an accepted request changed, for the notifications that follow its answer.
struct Change {
    next_before: Option<String>,
    pending_list_changed: bool,
}

impl JobsService {
    /// A service with no jobs.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a job execution for a thing (`QUEUED`, version 1); returns the `notify` message
    /// and, when the next pending job changes, the `notify-next` message AWS would publish.
    ///
    /// # Errors
    /// A message when the thing name or job id is not valid (AWS's characters and lengths;
    /// `$next` is reserved), the document is not a JSON object or is over
    /// [`MAX_JOB_DOCUMENT_BYTES`], or the thing already has a job with that id.
    pub fn add_job(
        &mut self,
        thing: &str,
        job_id: &str,
        document: Value,
        now: SystemTime,
    ) -> Result<Vec<Outbound>, String> {
        if !is_valid_thing_name(thing) {
            return Err(format!(
                "thing name {thing:?} is not valid: 1 to {MAX_THING_NAME} characters of [a-zA-Z0-9:_-]"
            ));
        }
        if !is_valid_job_id(job_id) {
            return Err(format!(
                "job id {job_id:?} is not valid: 1 to {MAX_JOB_ID} characters of [a-zA-Z0-9_-]"
            ));
        }
        if !document.is_object() {
            return Err("the job document must be a JSON object".to_owned());
        }
        let size = document.to_string().len();
        if size > MAX_JOB_DOCUMENT_BYTES {
            return Err(format!(
                "the job document is {size} bytes; the maximum is {MAX_JOB_DOCUMENT_BYTES}"
            ));
        }
        if self.find(thing, job_id).is_some() {
            return Err(format!("thing {thing} already has a job {job_id}"));
        }
        let next_before = self.next_job_id(thing);
        let now = epoch_seconds(now);
        self.things
            .entry(thing.to_owned())
            .or_default()
            .push(Execution {
                job_id: job_id.to_owned(),
                thing: thing.to_owned(),
                document,
                status: Status::Queued,
                status_details: None,
                queued_at: now,
                started_at: None,
                last_updated_at: now,
                version_number: 1,
                execution_number: 1,
            });
        let change = Change {
            next_before,
            pending_list_changed: true,
        };
        Ok(self.notifications(thing, &change, now))
    }

    /// Cancels a pending execution (`CANCELED`, as the control plane's `CancelJobExecution`)
    /// and returns the notifications AWS would publish.
    ///
    /// # Errors
    /// A message when the thing has no pending execution of that job.
    pub fn cancel_job(
        &mut self,
        thing: &str,
        job_id: &str,
        now: SystemTime,
    ) -> Result<Vec<Outbound>, String> {
        let next_before = self.next_job_id(thing);
        let now = epoch_seconds(now);
        let execution = self
            .find_mut(thing, job_id)
            .filter(|e| e.status.is_pending())
            .ok_or_else(|| format!("thing {thing} has no pending job {job_id}"))?;
        execution.status = Status::Canceled;
        execution.last_updated_at = now;
        execution.version_number += 1;
        let change = Change {
            next_before,
            pending_list_changed: true,
        };
        Ok(self.notifications(thing, &change, now))
    }

    /// Whether `topic` is one of the request topics this service answers:
    /// `$aws/things/<thing>/jobs/get`, `.../start-next`, `.../<jobId>/get` and
    /// `.../<jobId>/update`.
    #[must_use]
    pub fn handles(topic: &str) -> bool {
        parse_topic(topic).is_some()
    }

    /// Answers one request published on `topic`: one message on `<topic>/accepted` or
    /// `<topic>/rejected`, followed by `notify` / `notify-next` when the request changed the
    /// pending list or the next job. Topics this service does not handle get no answer.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now: SystemTime) -> Vec<Outbound> {
        let Some((thing, operation)) = parse_topic(topic) else {
            return Vec::new();
        };
        let seconds = epoch_seconds(now);
        let request = match parse_payload(payload) {
            Ok(request) => request,
            Err(rejection) => {
                return vec![rejected(topic, rejection, None, seconds)];
            }
        };
        let client_token = match client_token(&request) {
            Ok(token) => token,
            Err(rejection) => return vec![rejected(topic, rejection, None, seconds)],
        };
        let result = match operation {
            Operation::GetPending => Ok((self.get_pending(thing), None)),
            Operation::StartNext => self
                .start_next(thing, &request, seconds)
                .map(|body| (body, None)),
            Operation::Describe(job_id) => self
                .describe(thing, job_id, &request)
                .map(|body| (body, None)),
            Operation::Update(job_id) => self
                .update(thing, job_id, &request, seconds)
                .map(|(body, change)| (body, Some(change))),
        };
        match result {
            Ok((mut body, change)) => {
                if let Value::Object(map) = &mut body {
                    map.insert("timestamp".into(), json!(seconds));
                    if let Some(token) = &client_token {
                        map.insert("clientToken".into(), json!(token));
                    }
                }
                let mut out = vec![Outbound::new(
                    format!("{topic}/accepted"),
                    body.to_string().into_bytes(),
                )];
                if let Some(change) = change {
                    out.extend(self.notifications(thing, &change, seconds));
                }
                out
            }
            Err(rejection) => {
                vec![rejected(topic, rejection, client_token.as_deref(), seconds)]
            }
        }
    }

    /// The execution of `job_id` for `thing` (any status) as `DescribeJobExecution` would
    /// describe it, with its document; `None` when there is none. For inspection in tests.
    #[must_use]
    pub fn execution(&self, thing: &str, job_id: &str) -> Option<Value> {
        self.find(thing, job_id).map(|e| e.full(true))
    }

    // -------------------------------------------------------------------- operations

    fn get_pending(&self, thing: &str) -> Value {
        let summaries = |status: Status| -> Vec<Value> {
            self.executions(thing)
                .filter(|e| e.status == status)
                .map(Execution::summary)
                .collect()
        };
        json!({
            "inProgressJobs": summaries(Status::InProgress),
            "queuedJobs": summaries(Status::Queued),
        })
    }

    fn start_next(
        &mut self,
        thing: &str,
        request: &Map<String, Value>,
        now: u64,
    ) -> Result<Value, Rejection> {
        let details = status_details(request)?;
        let next_before = self.next_job_id(thing);
        let Some(execution) = next_before
            .as_deref()
            .and_then(|job_id| self.find_mut(thing, job_id))
        else {
            return Ok(json!({}));
        };
        if execution.status == Status::Queued {
            execution.status = Status::InProgress;
            execution.started_at = Some(now);
            execution.last_updated_at = now;
            execution.version_number += 1;
            if details.is_some() {
                execution.status_details = details;
            }
        }
        // Still pending and still next: neither notify nor notify-next.
        Ok(json!({"execution": execution.full(true)}))
    }

    fn describe(
        &self,
        thing: &str,
        job_id: &str,
        request: &Map<String, Value>,
    ) -> Result<Value, Rejection> {
        let include_document = optional_bool(request, "includeJobDocument")?.unwrap_or(true);
        let execution_number = optional_u64(request, "executionNumber")?;
        if job_id == NEXT {
            let next = self.next_job_id(thing);
            return Ok(match next.and_then(|id| self.find(thing, &id)) {
                Some(execution) => json!({"execution": execution.full(include_document)}),
                None => json!({}),
            });
        }
        let execution = self
            .find(thing, job_id)
            .filter(|e| execution_number.is_none_or(|n| n == e.execution_number))
            .ok_or_else(|| Rejection::not_found(job_id, thing))?;
        if !execution.status.is_pending() {
            return Err(Rejection::new(
                "TerminalStateReached",
                format!(
                    "Job execution for job {job_id} is in terminal state {}",
                    execution.status.as_str()
                ),
            ));
        }
        Ok(json!({"execution": execution.full(include_document)}))
    }

    fn update(
        &mut self,
        thing: &str,
        job_id: &str,
        request: &Map<String, Value>,
        now: u64,
    ) -> Result<(Value, Change), Rejection> {
        if job_id == NEXT {
            return Err(Rejection::new(
                "InvalidTopic",
                "$next is only valid for DescribeJobExecution",
            ));
        }
        let status = match request.get("status") {
            Some(Value::String(name)) => Status::settable_by_device(name),
            _ => None,
        }
        .ok_or_else(|| {
            Rejection::invalid_request(
                "status must be one of IN_PROGRESS, SUCCEEDED, FAILED, REJECTED",
            )
        })?;
        let details = status_details(request)?;
        let expected_version = optional_u64(request, "expectedVersion")?;
        let execution_number = optional_u64(request, "executionNumber")?;
        let include_state = optional_bool(request, "includeJobExecutionState")?.unwrap_or(false);
        let include_document = optional_bool(request, "includeJobDocument")?.unwrap_or(false);

        let next_before = self.next_job_id(thing);
        let execution = self
            .find_mut(thing, job_id)
            .filter(|e| execution_number.is_none_or(|n| n == e.execution_number))
            .ok_or_else(|| Rejection::not_found(job_id, thing))?;
        if let Some(expected) = expected_version {
            if expected != execution.version_number {
                return Err(Rejection::new(
                    "VersionMismatch",
                    format!(
                        "expectedVersion {expected} does not match the current version {}",
                        execution.version_number
                    ),
                )
                .with_state(execution));
            }
        }
        if !execution.status.is_pending() {
            return Err(Rejection::new(
                "InvalidStateTransition",
                format!(
                    "Cannot update job execution from {} to {}",
                    execution.status.as_str(),
                    status.as_str()
                ),
            )
            .with_state(execution));
        }
        if status == Status::InProgress && execution.started_at.is_none() {
            execution.started_at = Some(now);
        }
        execution.status = status;
        if details.is_some() {
            execution.status_details = details;
        }
        execution.last_updated_at = now;
        execution.version_number += 1;

        let mut body = Map::new();
        if include_state {
            body.insert("executionState".into(), execution.state());
        }
        if include_document {
            body.insert("jobDocument".into(), execution.document.clone());
        }
        let change = Change {
            next_before,
            pending_list_changed: !status.is_pending(),
        };
        Ok((Value::Object(body), change))
    }

    // -------------------------------------------------------------------- state

    fn executions<'a>(&'a self, thing: &str) -> impl Iterator<Item = &'a Execution> + 'a {
        self.things.get(thing).into_iter().flatten()
    }

    fn find(&self, thing: &str, job_id: &str) -> Option<&Execution> {
        self.executions(thing).find(|e| e.job_id == job_id)
    }

    fn find_mut(&mut self, thing: &str, job_id: &str) -> Option<&mut Execution> {
        self.things
            .get_mut(thing)?
            .iter_mut()
            .find(|e| e.job_id == job_id)
    }

    /// The id of `$next`: the first `IN_PROGRESS` execution, else the first `QUEUED` one.
    fn next_job_id(&self, thing: &str) -> Option<String> {
        self.executions(thing)
            .find(|e| e.status == Status::InProgress)
            .or_else(|| self.executions(thing).find(|e| e.status == Status::Queued))
            .map(|e| e.job_id.clone())
    }

    /// `notify` when the pending list changed, `notify-next` when the next job id changed.
    fn notifications(&self, thing: &str, change: &Change, now: u64) -> Vec<Outbound> {
        let base = format!("$aws/things/{thing}/jobs");
        let mut out = Vec::new();
        if change.pending_list_changed {
            let mut groups = Map::new();
            for status in [Status::Queued, Status::InProgress] {
                let summaries: Vec<Value> = self
                    .executions(thing)
                    .filter(|e| e.status == status)
                    .map(Execution::summary)
                    .collect();
                if !summaries.is_empty() {
                    groups.insert(status.as_str().into(), Value::Array(summaries));
                }
            }
            let body = json!({"timestamp": now, "jobs": groups});
            out.push(Outbound::new(
                format!("{base}/notify"),
                body.to_string().into_bytes(),
            ));
        }
        let next_after = self.next_job_id(thing);
        if next_after != change.next_before {
            let mut body = Map::new();
            body.insert("timestamp".into(), json!(now));
            if let Some(execution) = next_after.and_then(|id| self.find(thing, &id)) {
                body.insert("execution".into(), execution.full(true));
            }
            out.push(Outbound::new(
                format!("{base}/notify-next"),
                Value::Object(body).to_string().into_bytes(),
            ));
        }
        out
    }
}

// ------------------------------------------------------------------------ parsing

fn parse_topic(topic: &str) -> Option<(&str, Operation<'_>)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let (thing, rest) = rest.split_once("/jobs/")?;
    if thing.is_empty() || thing.contains(['/', '+', '#']) {
        return None;
    }
    let operation = match rest.split_once('/') {
        None if rest == "get" => Operation::GetPending,
        None if rest == "start-next" => Operation::StartNext,
        Some((job_id, "get")) if is_topic_level(job_id) => Operation::Describe(job_id),
        Some((job_id, "update")) if is_topic_level(job_id) => Operation::Update(job_id),
        _ => return None,
    };
    Some((thing, operation))
}

fn is_topic_level(level: &str) -> bool {
    !level.is_empty() && !level.contains(['/', '+', '#'])
}

/// The request body: an empty payload is an empty map.
fn parse_payload(payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::invalid_request(
            "The request payload is not a JSON object",
        )),
        Err(_) => Err(Rejection::new(
            "InvalidJson",
            "The request payload is not valid UTF-8 JSON",
        )),
    }
}

fn client_token(request: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match request.get("clientToken") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(token)) if token.len() <= MAX_CLIENT_TOKEN => Ok(Some(token.clone())),
        Some(_) => Err(Rejection::invalid_request(format!(
            "clientToken must be a string of at most {MAX_CLIENT_TOKEN} characters"
        ))),
    }
}

/// `statusDetails`: a map of strings, or absent (unchanged).
fn status_details(request: &Map<String, Value>) -> Result<Option<Map<String, Value>>, Rejection> {
    match request.get("statusDetails") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(details)) if details.values().all(Value::is_string) => {
            Ok(Some(details.clone()))
        }
        Some(_) => Err(Rejection::invalid_request(
            "statusDetails must be a map of strings",
        )),
    }
}

fn optional_bool(request: &Map<String, Value>, key: &str) -> Result<Option<bool>, Rejection> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Rejection::invalid_request(format!(
            "{key} must be a boolean"
        ))),
    }
}

fn optional_u64(request: &Map<String, Value>, key: &str) -> Result<Option<u64>, Rejection> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| Rejection::invalid_request(format!("{key} must be a whole number"))),
    }
}

fn rejected(topic: &str, rejection: Rejection, client_token: Option<&str>, now: u64) -> Outbound {
    let mut body = Map::new();
    body.insert("code".into(), json!(rejection.code));
    body.insert("message".into(), json!(rejection.message));
    body.insert("timestamp".into(), json!(now));
    if let Some(token) = client_token {
        body.insert("clientToken".into(), json!(token));
    }
    if let Some(state) = rejection.execution_state {
        body.insert("executionState".into(), state);
    }
    Outbound::new(
        format!("{topic}/rejected"),
        Value::Object(body).to_string().into_bytes(),
    )
}

fn epoch_seconds(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn is_valid_thing_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_THING_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

fn is_valid_job_id(job_id: &str) -> bool {
    !job_id.is_empty()
        && job_id.len() <= MAX_JOB_ID
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: &str = "$aws/things/dev1/jobs";

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn body(out: &Outbound) -> Value {
        serde_json::from_slice(&out.payload).unwrap()
    }

    fn topics(out: &[Outbound]) -> Vec<&str> {
        out.iter().map(|o| o.topic.as_str()).collect()
    }

    fn two_jobs() -> JobsService {
        let mut s = JobsService::new();
        s.add_job("dev1", "job-a", json!({"op": "a"}), at(100))
            .unwrap();
        s.add_job("dev1", "job-b", json!({"op": "b"}), at(101))
            .unwrap();
        s
    }

    fn request(s: &mut JobsService, topic: &str, payload: Value, now: u64) -> Vec<Outbound> {
        s.handle(topic, payload.to_string().as_bytes(), at(now))
    }

    #[test]
    fn handles_only_the_request_topics() {
        for topic in [
            "$aws/things/dev1/jobs/get",
            "$aws/things/dev1/jobs/start-next",
            "$aws/things/dev1/jobs/job-a/get",
            "$aws/things/dev1/jobs/$next/get",
            "$aws/things/dev1/jobs/job-a/update",
        ] {
            assert!(JobsService::handles(topic), "{topic}");
        }
        for topic in [
            "$aws/things/dev1/jobs/get/accepted",
            "$aws/things/dev1/jobs/start-next/rejected",
            "$aws/things/dev1/jobs/job-a/get/accepted",
            "$aws/things/dev1/jobs/notify",
            "$aws/things/dev1/jobs/notify-next",
            "$aws/things/dev1/jobs/job-a/delete",
            "$aws/things//jobs/get",
            "$aws/things/dev1/shadow/get",
            "things/dev1/jobs/get",
        ] {
            assert!(!JobsService::handles(topic), "{topic}");
        }
        assert!(JobsService::new().handle("a/b", b"", at(1)).is_empty());
    }

    #[test]
    fn add_job_publishes_notify_and_notify_next_when_the_next_job_changes() {
        let mut s = JobsService::new();
        let out = s
            .add_job("dev1", "job-a", json!({"op": "a"}), at(100))
            .unwrap();
        assert_eq!(
            topics(&out),
            [format!("{T}/notify"), format!("{T}/notify-next")]
        );
        assert_eq!(
            body(&out[0]),
            json!({"timestamp": 100, "jobs": {"QUEUED": [{"jobId": "job-a", "queuedAt": 100, "lastUpdatedAt": 100, "versionNumber": 1, "executionNumber": 1}]}})
        );
        let next = body(&out[1]);
        assert_eq!(next["timestamp"], 100);
        assert_eq!(next["execution"]["jobId"], "job-a");
        assert_eq!(next["execution"]["jobDocument"], json!({"op": "a"}));
        assert_eq!(next["execution"]["status"], "QUEUED");

        // A second job does not change $next: notify only.
        let out = s
            .add_job("dev1", "job-b", json!({"op": "b"}), at(101))
            .unwrap();
        assert_eq!(topics(&out), [format!("{T}/notify")]);
        let queued = &body(&out[0])["jobs"]["QUEUED"];
        assert_eq!(queued.as_array().unwrap().len(), 2);
        assert_eq!(queued[1]["jobId"], "job-b");
    }

    #[test]
    fn add_job_refuses_bad_input() {
        let mut s = two_jobs();
        assert!(s
            .add_job("dev1", "job-a", json!({}), at(1))
            .unwrap_err()
            .contains("already"));
        assert!(s.add_job("dev1", "$next", json!({}), at(1)).is_err());
        assert!(s.add_job("dev1", "", json!({}), at(1)).is_err());
        assert!(s.add_job("dev/1", "j", json!({}), at(1)).is_err());
        assert!(s.add_job("dev1", "j", json!([1]), at(1)).is_err());
        let big = json!({"x": "y".repeat(MAX_JOB_DOCUMENT_BYTES)});
        assert!(s
            .add_job("dev1", "j", big, at(1))
            .unwrap_err()
            .contains("maximum"));
        // The same job id for another thing is fine.
        assert!(s.add_job("dev2", "job-a", json!({}), at(1)).is_ok());
    }

    #[test]
    fn the_full_workflow() {
        let mut s = two_jobs();

        // GetPendingJobExecutions: both queued.
        let out = request(
            &mut s,
            &format!("{T}/get"),
            json!({"clientToken": "c1"}),
            200,
        );
        assert_eq!(topics(&out), [format!("{T}/get/accepted")]);
        let pending = body(&out[0]);
        assert_eq!(pending["inProgressJobs"], json!([]));
        assert_eq!(pending["queuedJobs"][0]["jobId"], "job-a");
        assert_eq!(pending["queuedJobs"][1]["jobId"], "job-b");
        assert_eq!(pending["clientToken"], "c1");
        assert_eq!(pending["timestamp"], 200);

        // StartNextPendingJobExecution: job-a IN_PROGRESS, version 2, no notifications.
        let out = request(
            &mut s,
            &format!("{T}/start-next"),
            json!({"statusDetails": {"step": "download"}, "clientToken": "c2"}),
            210,
        );
        assert_eq!(topics(&out), [format!("{T}/start-next/accepted")]);
        let started = body(&out[0]);
        assert_eq!(started["clientToken"], "c2");
        let execution = &started["execution"];
        assert_eq!(execution["jobId"], "job-a");
        assert_eq!(execution["thingName"], "dev1");
        assert_eq!(execution["status"], "IN_PROGRESS");
        assert_eq!(execution["statusDetails"], json!({"step": "download"}));
        assert_eq!(execution["startedAt"], 210);
        assert_eq!(execution["versionNumber"], 2);
        assert_eq!(execution["jobDocument"], json!({"op": "a"}));

        let out = request(&mut s, &format!("{T}/get"), json!({}), 211);
        let pending = body(&out[0]);
        assert_eq!(pending["inProgressJobs"][0]["jobId"], "job-a");
        assert_eq!(pending["inProgressJobs"][0]["startedAt"], 210);
        assert_eq!(pending["queuedJobs"][0]["jobId"], "job-b");
        assert!(pending.get("clientToken").is_none());

        // Wrong expected version: VersionMismatch with the current state, nothing changes.
        let update = format!("{T}/job-a/update");
        let out = request(
            &mut s,
            &update,
            json!({"status": "SUCCEEDED", "expectedVersion": 1, "clientToken": "c3"}),
            220,
        );
        assert_eq!(topics(&out), [format!("{update}/rejected")]);
        let rejection = body(&out[0]);
        assert_eq!(rejection["code"], "VersionMismatch");
        assert_eq!(rejection["clientToken"], "c3");
        assert_eq!(rejection["timestamp"], 220);
        assert_eq!(
            rejection["executionState"],
            json!({"status": "IN_PROGRESS", "statusDetails": {"step": "download"}, "versionNumber": 2})
        );

        // SUCCEEDED with the right version: accepted, notify, notify-next names job-b.
        let out = request(
            &mut s,
            &update,
            json!({"status": "SUCCEEDED", "expectedVersion": 2, "statusDetails": {"step": "done"}, "includeJobExecutionState": true, "includeJobDocument": true, "clientToken": "c4"}),
            230,
        );
        assert_eq!(
            topics(&out),
            [
                format!("{update}/accepted"),
                format!("{T}/notify"),
                format!("{T}/notify-next")
            ]
        );
        assert_eq!(
            body(&out[0]),
            json!({
                "executionState": {"status": "SUCCEEDED", "statusDetails": {"step": "done"}, "versionNumber": 3},
                "jobDocument": {"op": "a"},
                "timestamp": 230,
                "clientToken": "c4"
            })
        );
        let notify = body(&out[1]);
        assert_eq!(notify["jobs"]["QUEUED"][0]["jobId"], "job-b");
        assert!(notify["jobs"].get("IN_PROGRESS").is_none());
        let next = body(&out[2]);
        assert_eq!(next["execution"]["jobId"], "job-b");
        assert_eq!(next["execution"]["status"], "QUEUED");

        // A terminal execution cannot change.
        let out = request(&mut s, &update, json!({"status": "IN_PROGRESS"}), 240);
        let rejection = body(&out[0]);
        assert_eq!(rejection["code"], "InvalidStateTransition");
        assert_eq!(rejection["executionState"]["status"], "SUCCEEDED");
        assert_eq!(s.execution("dev1", "job-a").unwrap()["versionNumber"], 3);

        // Unknown job.
        let out = request(
            &mut s,
            &format!("{T}/nope/update"),
            json!({"status": "FAILED", "clientToken": "c5"}),
            250,
        );
        assert_eq!(topics(&out), [format!("{T}/nope/update/rejected")]);
        let rejection = body(&out[0]);
        assert_eq!(rejection["code"], "ResourceNotFound");
        assert_eq!(rejection["clientToken"], "c5");
        assert!(rejection.get("executionState").is_none());

        // Rejecting the last job empties the list: notify with no jobs, notify-next without execution.
        let out = request(
            &mut s,
            &format!("{T}/job-b/update"),
            json!({"status": "REJECTED"}),
            260,
        );
        assert_eq!(
            topics(&out),
            [
                format!("{T}/job-b/update/accepted"),
                format!("{T}/notify"),
                format!("{T}/notify-next")
            ]
        );
        assert_eq!(body(&out[0]), json!({"timestamp": 260}));
        assert_eq!(body(&out[1]), json!({"timestamp": 260, "jobs": {}}));
        assert_eq!(body(&out[2]), json!({"timestamp": 260}));

        // Nothing left: start-next answers without an execution.
        let out = request(&mut s, &format!("{T}/start-next"), json!({}), 270);
        assert_eq!(body(&out[0]), json!({"timestamp": 270}));
        assert_eq!(s.execution("dev1", "job-b").unwrap()["status"], "REJECTED");
    }

    #[test]
    fn in_progress_updates_keep_the_pending_list_but_may_change_next() {
        let mut s = two_jobs();
        // job-b goes IN_PROGRESS directly: it becomes $next (IN_PROGRESS first), no notify.
        let out = request(
            &mut s,
            &format!("{T}/job-b/update"),
            json!({"status": "IN_PROGRESS"}),
            300,
        );
        assert_eq!(
            topics(&out),
            [
                format!("{T}/job-b/update/accepted"),
                format!("{T}/notify-next")
            ]
        );
        assert_eq!(body(&out[1])["execution"]["jobId"], "job-b");
        // Another IN_PROGRESS update only changes details: no notification at all.
        let out = request(
            &mut s,
            &format!("{T}/job-b/update"),
            json!({"status": "IN_PROGRESS", "statusDetails": {"p": "50"}}),
            301,
        );
        assert_eq!(topics(&out), [format!("{T}/job-b/update/accepted")]);
        let execution = s.execution("dev1", "job-b").unwrap();
        assert_eq!(execution["versionNumber"], 3);
        assert_eq!(execution["startedAt"], 300);
        assert_eq!(execution["lastUpdatedAt"], 301);
    }

    #[test]
    fn describe_by_id_and_next() {
        let mut s = two_jobs();
        let out = request(
            &mut s,
            &format!("{T}/$next/get"),
            json!({"clientToken": "d1"}),
            400,
        );
        assert_eq!(topics(&out), [format!("{T}/$next/get/accepted")]);
        let described = body(&out[0]);
        assert_eq!(described["execution"]["jobId"], "job-a");
        assert_eq!(described["execution"]["jobDocument"], json!({"op": "a"}));
        assert_eq!(described["clientToken"], "d1");

        let out = request(
            &mut s,
            &format!("{T}/job-b/get"),
            json!({"includeJobDocument": false}),
            401,
        );
        let described = body(&out[0]);
        assert_eq!(described["execution"]["jobId"], "job-b");
        assert!(described["execution"].get("jobDocument").is_none());

        let out = request(
            &mut s,
            &format!("{T}/job-b/get"),
            json!({"executionNumber": 2}),
            402,
        );
        assert_eq!(body(&out[0])["code"], "ResourceNotFound");

        let out = request(&mut s, &format!("{T}/job-z/get"), json!({}), 403);
        assert_eq!(body(&out[0])["code"], "ResourceNotFound");

        request(
            &mut s,
            &format!("{T}/job-a/update"),
            json!({"status": "FAILED"}),
            404,
        );
        let out = request(&mut s, &format!("{T}/job-a/get"), json!({}), 405);
        assert_eq!(body(&out[0])["code"], "TerminalStateReached");
        let out = request(&mut s, &format!("{T}/$next/get"), json!({}), 406);
        assert_eq!(body(&out[0])["execution"]["jobId"], "job-b");

        // A thing with no jobs: $next has no execution.
        let out = request(&mut s, "$aws/things/other/jobs/$next/get", json!({}), 407);
        assert_eq!(body(&out[0]), json!({"timestamp": 407}));
        let out = request(&mut s, "$aws/things/other/jobs/get", json!({}), 408);
        assert_eq!(
            body(&out[0]),
            json!({"inProgressJobs": [], "queuedJobs": [], "timestamp": 408})
        );
    }

    #[test]
    fn invalid_requests_are_rejected_with_the_client_token() {
        let mut s = two_jobs();
        let update = format!("{T}/job-a/update");
        for (payload, code) in [
            (json!({"clientToken": "e1"}), "InvalidRequest"),
            (
                json!({"status": "QUEUED", "clientToken": "e1"}),
                "InvalidRequest",
            ),
            (
                json!({"status": "CANCELED", "clientToken": "e1"}),
                "InvalidRequest",
            ),
            (
                json!({"status": "SUCCEEDED", "statusDetails": {"n": 1}, "clientToken": "e1"}),
                "InvalidRequest",
            ),
            (
                json!({"status": "SUCCEEDED", "expectedVersion": "1", "clientToken": "e1"}),
                "InvalidRequest",
            ),
            (
                json!({"status": "SUCCEEDED", "includeJobDocument": "yes", "clientToken": "e1"}),
                "InvalidRequest",
            ),
        ] {
            let out = request(&mut s, &update, payload.clone(), 500);
            let rejection = body(&out[0]);
            assert_eq!(rejection["code"], code, "{payload}");
            assert_eq!(rejection["clientToken"], "e1", "{payload}");
        }
        let out = s.handle(&update, b"{nope", at(501));
        assert_eq!(body(&out[0])["code"], "InvalidJson");
        let out = s.handle(&update, b"[1]", at(501));
        assert_eq!(body(&out[0])["code"], "InvalidRequest");
        let out = request(
            &mut s,
            &update,
            json!({"status": "SUCCEEDED", "clientToken": 7}),
            502,
        );
        let rejection = body(&out[0]);
        assert_eq!(rejection["code"], "InvalidRequest");
        assert!(rejection.get("clientToken").is_none());
        let out = request(
            &mut s,
            &format!("{T}/$next/update"),
            json!({"status": "SUCCEEDED"}),
            503,
        );
        assert_eq!(body(&out[0])["code"], "InvalidTopic");
        // Nothing was changed by any of them.
        assert_eq!(s.execution("dev1", "job-a").unwrap()["versionNumber"], 1);
        assert_eq!(s.execution("dev1", "job-a").unwrap()["status"], "QUEUED");
    }

    #[test]
    fn an_empty_payload_is_an_empty_request() {
        let mut s = two_jobs();
        let out = s.handle(&format!("{T}/start-next"), b"", at(600));
        assert_eq!(body(&out[0])["execution"]["jobId"], "job-a");
        // start-next again returns the same IN_PROGRESS execution unchanged.
        let out = s.handle(&format!("{T}/start-next"), b" ", at(601));
        assert_eq!(body(&out[0])["execution"]["versionNumber"], 2);
        assert_eq!(body(&out[0])["execution"]["startedAt"], 600);
    }

    #[test]
    fn cancel_job_leaves_the_pending_list() {
        let mut s = two_jobs();
        let out = s.cancel_job("dev1", "job-a", at(700)).unwrap();
        assert_eq!(
            topics(&out),
            [format!("{T}/notify"), format!("{T}/notify-next")]
        );
        assert_eq!(body(&out[1])["execution"]["jobId"], "job-b");
        assert_eq!(s.execution("dev1", "job-a").unwrap()["status"], "CANCELED");
        assert!(s.cancel_job("dev1", "job-a", at(701)).is_err());
        assert!(s.execution("dev1", "nope").is_none());
    }
}
