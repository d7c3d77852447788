//! Fleet provisioning (AWS IoT's MQTT API, reference E5): `CreateKeysAndCertificate`,
//! `CreateCertificateFromCsr` and `RegisterThing` with provisioning templates, on the `/json`
//! and `/cbor` topics.
//!
//! Sans-IO: the broker hands every PUBLISH on a request topic to [`ProvisioningService::handle`]
//! and publishes the [`Outbound`]s it returns (`<request topic>/accepted` or `/rejected`, in the
//! request's format). Certificates and the registry live in the core, behind
//! [`ProvisioningBackend`].
//!
//! Choices where AWS documents nothing (the MQTT error codes are not published by AWS; the
//! ones below follow the device SDKs' samples and are the project's choice):
//! - Rejections are `{statusCode, errorCode, errorMessage}`: 400 `InvalidPayload` (not a JSON
//!   or CBOR map, a required field missing), 400 `InvalidCSR` (the backend refused the CSR),
//!   400 `InvalidCertificateOwnershipToken` (unknown or expired token), 400
//!   `InvalidParameters` (a template parameter missing, not allowed or of the wrong type, a
//!   thing name that is not valid), 404 `ResourceNotFound` (no such template), 500
//!   `InternalFailure` (the backend failed).
//! - The ownership token is bound to its certificate and valid for one hour from issue; it may
//!   be presented again within that hour (a device that lost the `/accepted` answer can retry
//!   `RegisterThing`; AWS documents only the expiry). Expired tokens are forgotten.
//! - Templates: `Parameters` (`Type` `String` or `Number`, `Default`, `AllowedValues`),
//!   `{"Ref": ...}`, `Fn::Join`, `Fn::Sub` (its string form, `${Name}` and `${!Literal}`), the
//!   pseudo parameter `AWS::IoT::Certificate::Id`. Not supported (refused by
//!   [`ProvisioningService::add_template`]): `Conditions`, `Fn::If` and every other intrinsic
//!   function, `AllowedPattern`, certificate `Status` other than `Active`, pre-provisioning
//!   hooks. `AWS::IoT::Policy`, `ThingGroups`, `ThingTypeName` and `OverrideSettings` are
//!   accepted and ignored (the local core enforces no policies).
//!
//! Payloads are never logged: `privateKey` is a secret.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use crate::core::services::cbor;
use crate::local::service::Outbound;

/// How long a certificate ownership token is valid after it was issued (AWS: one hour).
pub const OWNERSHIP_TOKEN_VALIDITY: Duration = Duration::from_secs(3600);

/// The pseudo parameter a template refers to for the certificate being provisioned.
const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

/// Longest thing name AWS accepts.
const MAX_THING_NAME: usize = 128;

/// Longest provisioning template name AWS accepts.
const MAX_TEMPLATE_NAME: usize = 36;

/// What provisioning needs from the rest of the core (the CA and the registry); implemented by
/// the core, faked in tests.
pub trait ProvisioningBackend {
    /// A new key pair + certificate signed by the core's CA, status `PENDING_ACTIVATION`.
    ///
    /// # Errors
    /// A message (no secrets) when the certificate cannot be made; answered with a 500.
    fn create_keys_and_certificate(&mut self) -> Result<NewCertificate, String>;

    /// A certificate for the CSR (PEM), status `PENDING_ACTIVATION`.
    ///
    /// # Errors
    /// A message for a CSR that cannot be parsed, verified or accepted; answered with a 400.
    fn create_certificate_from_csr(&mut self, csr_pem: &str) -> Result<NewCertificate, String>;

    /// Creates (or updates) the thing with `attributes`, activates the certificate and attaches
    /// it to the thing.
    ///
    /// # Errors
    /// A message (no secrets) when the registry refuses; answered with a 500.
    fn register_thing(
        &mut self,
        thing_name: &str,
        certificate_id: &str,
        attributes: &Map<String, Value>,
    ) -> Result<(), String>;
}

/// A certificate the backend issued for `CreateKeysAndCertificate` or
/// `CreateCertificateFromCsr`.
#[derive(Clone, PartialEq, Eq)]
pub struct NewCertificate {
    /// The certificate id (lowercase hex SHA-256 of the DER, as AWS's).
    pub certificate_id: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key, PEM (`CreateKeysAndCertificate` only; `None` for a CSR).
    pub private_key_pem: Option<String>,
}

impl fmt::Debug for NewCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCertificate")
            .field("certificate_id", &self.certificate_id)
            .field("certificate_pem_len", &self.certificate_pem.len())
            .field(
                "private_key_pem",
                &self.private_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Fleet provisioning: the templates and the outstanding certificate ownership tokens.
#[derive(Default)]
pub struct ProvisioningService {
    templates: HashMap<String, Template>,
    tokens: HashMap<String, Ownership>,
}

impl fmt::Debug for ProvisioningService {
    // The tokens are credentials: only their number is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut templates: Vec<&String> = self.templates.keys().collect();
        templates.sort();
        f.debug_struct("ProvisioningService")
            .field("templates", &templates)
            .field("ownership_tokens", &self.tokens.len())
            .finish()
    }
}

/// Which certificate a token proves ownership of, and since when.
#[derive(Debug)]
struct Ownership {
    certificate_id: String,
    issued_at: SystemTime,
}

impl ProvisioningService {
    /// A service with no templates and no tokens.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a provisioning template: the AWS template body, with `Parameters`,
    /// `Resources` holding one `AWS::IoT::Thing` (`ThingName`, `AttributePayload`), one
    /// `AWS::IoT::Certificate` (`CertificateId` = `{"Ref": "AWS::IoT::Certificate::Id"}`,
    /// `Status` `Active`) and any `AWS::IoT::Policy`, and an optional `DeviceConfiguration`.
    ///
    /// # Errors
    /// A message saying what is wrong when the name is not a valid template name or the body
    /// is not a template this service can evaluate (see the module documentation).
    pub fn add_template(&mut self, name: &str, body: Value) -> Result<(), String> {
        validate_template_name(name)?;
        let template = Template::parse(&body).map_err(|e| format!("template {name}: {e}"))?;
        self.templates.insert(name.to_owned(), template);
        Ok(())
    }

    /// Whether a template named `name` was added.
    #[must_use]
    pub fn has_template(&self, name: &str) -> bool {
        self.templates.contains_key(name)
    }

    /// Whether `topic` is one of the request topics this service answers:
    /// `$aws/certificates/create/<fmt>`, `$aws/certificates/create-from-csr/<fmt>` and
    /// `$aws/provisioning-templates/<template>/provision/<fmt>`, `<fmt>` `json` or `cbor`.
    #[must_use]
    pub fn handles(topic: &str) -> bool {
        parse_topic(topic).is_some()
    }

    /// Answers one request published on `topic`: one message on `<topic>/accepted` or
    /// `<topic>/rejected`, encoded like the request (JSON or CBOR). Topics this service does
    /// not handle get no answer.
    pub fn handle(
        &mut self,
        topic: &str,
        payload: &[u8],
        now: SystemTime,
        backend: &mut dyn ProvisioningBackend,
    ) -> Vec<Outbound> {
        let Some((request, format)) = parse_topic(topic) else {
            return Vec::new();
        };
        let result = match request {
            Request::CreateKeysAndCertificate => self.create_keys_and_certificate(now, backend),
            Request::CreateCertificateFromCsr => format
                .decode(payload)
                .and_then(|body| self.create_certificate_from_csr(&body, now, backend)),
            Request::RegisterThing(template) => format
                .decode(payload)
                .and_then(|body| self.register_thing(template, &body, now, backend)),
        };
        self.forget_expired_tokens(now);
        let (outcome, body) = match result {
            Ok(body) => ("accepted", body),
            Err(rejection) => {
                log::debug!(
                    "provisioning request on {topic} rejected: {} {}",
                    rejection.status_code,
                    rejection.error_code
                );
                ("rejected", rejection.to_json())
            }
        };
        vec![Outbound::new(
            format!("{topic}/{outcome}"),
            format.encode(&body),
        )]
    }

    fn create_keys_and_certificate(
        &mut self,
        now: SystemTime,
        backend: &mut dyn ProvisioningBackend,
    ) -> Result<Value, Rejection> {
        let certificate = backend
            .create_keys_and_certificate()
            .map_err(|e| Rejection::internal(&e))?;
        let Some(private_key) = certificate.private_key_pem.clone() else {
            return Err(Rejection::internal(
                "the backend returned no private key for a new key pair",
            ));
        };
        let token = self.issue_token(&certificate.certificate_id, now);
        Ok(json!({
            "certificateId": certificate.certificate_id,
            "certificatePem": certificate.certificate_pem,
            "privateKey": private_key,
            "certificateOwnershipToken": token,
        }))
    }

    fn create_certificate_from_csr(
        &mut self,
        body: &Map<String, Value>,
        now: SystemTime,
        backend: &mut dyn ProvisioningBackend,
    ) -> Result<Value, Rejection> {
        let csr = match body.get("certificateSigningRequest") {
            Some(Value::String(csr)) if !csr.trim().is_empty() => csr,
            _ => {
                return Err(Rejection::invalid_payload(
                    "certificateSigningRequest is missing or not a string",
                ))
            }
        };
        let certificate = backend
            .create_certificate_from_csr(csr)
            .map_err(|e| Rejection::new(400, INVALID_CSR, e))?;
        let token = self.issue_token(&certificate.certificate_id, now);
        Ok(json!({
            "certificateOwnershipToken": token,
            "certificateId": certificate.certificate_id,
            "certificatePem": certificate.certificate_pem,
        }))
    }

    fn register_thing(
        &self,
        template_name: &str,
        body: &Map<String, Value>,
        now: SystemTime,
        backend: &mut dyn ProvisioningBackend,
    ) -> Result<Value, Rejection> {
        let template = self.templates.get(template_name).ok_or_else(|| {
            Rejection::new(
                404,
                RESOURCE_NOT_FOUND,
                format!("Template {template_name} not found"),
            )
        })?;
        let certificate_id =
            self.certificate_of_token(body.get("certificateOwnershipToken"), now)?;
        let parameters = match body.get("parameters") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(parameters)) => parameters.clone(),
            Some(_) => {
                return Err(Rejection::invalid_payload("parameters must be a map"));
            }
        };
        let provisioned = template
            .evaluate(&parameters, certificate_id)
            .map_err(|e| Rejection::new(400, INVALID_PARAMETERS, e))?;
        backend
            .register_thing(
                &provisioned.thing_name,
                certificate_id,
                &provisioned.attributes,
            )
            .map_err(|e| Rejection::internal(&e))?;
        Ok(json!({
            "deviceConfiguration": provisioned.device_configuration,
            "thingName": provisioned.thing_name,
        }))
    }

    /// A fresh random token for `certificate_id`, valid for [`OWNERSHIP_TOKEN_VALIDITY`].
    fn issue_token(&mut self, certificate_id: &str, now: SystemTime) -> String {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.tokens.insert(
            token.clone(),
            Ownership {
                certificate_id: certificate_id.to_owned(),
                issued_at: now,
            },
        );
        token
    }

    fn certificate_of_token(
        &self,
        token: Option<&Value>,
        now: SystemTime,
    ) -> Result<&str, Rejection> {
        let token = match token {
            Some(Value::String(token)) if !token.is_empty() => token,
            _ => {
                return Err(Rejection::invalid_payload(
                    "certificateOwnershipToken is missing or not a string",
                ))
            }
        };
        let ownership = self.tokens.get(token).ok_or_else(|| {
            Rejection::new(
                400,
                INVALID_OWNERSHIP_TOKEN,
                "certificateOwnershipToken is not valid",
            )
        })?;
        if is_expired(ownership, now) {
            return Err(Rejection::new(
                400,
                INVALID_OWNERSHIP_TOKEN,
                "certificateOwnershipToken has expired",
            ));
        }
        Ok(&ownership.certificate_id)
    }

    fn forget_expired_tokens(&mut self, now: SystemTime) {
        self.tokens
            .retain(|_, ownership| !is_expired(ownership, now));
    }
}

fn is_expired(ownership: &Ownership, now: SystemTime) -> bool {
    // A clock that went backwards counts as "just issued".
    now.duration_since(ownership.issued_at)
        .is_ok_and(|age| age > OWNERSHIP_TOKEN_VALIDITY)
}

fn validate_template_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_TEMPLATE_NAME || !valid_chars {
        return Err(format!(
            "template name {name:?} is not valid: 1 to {MAX_TEMPLATE_NAME} characters of [0-9A-Za-z_-]"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// topics and formats
// ------------------------------------------------------------------------------------------

/// One of the three operations, with the template name for `RegisterThing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request<'a> {
    CreateKeysAndCertificate,
    CreateCertificateFromCsr,
    RegisterThing(&'a str),
}

/// The payload format named by the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Cbor,
}

fn parse_topic(topic: &str) -> Option<(Request<'_>, Format)> {
    let (rest, format) = topic.rsplit_once('/')?;
    let format = match format {
        "json" => Format::Json,
        "cbor" => Format::Cbor,
        _ => return None,
    };
    let request = match rest {
        "$aws/certificates/create" => Request::CreateKeysAndCertificate,
        "$aws/certificates/create-from-csr" => Request::CreateCertificateFromCsr,
        _ => {
            let template = rest
                .strip_prefix("$aws/provisioning-templates/")?
                .strip_suffix("/provision")?;
            if template.is_empty() || template.contains(['/', '+', '#']) {
                return None;
            }
            Request::RegisterThing(template)
        }
    };
    Some((request, format))
}

impl Format {
    /// The request body as a map; an empty payload is an empty map.
    fn decode(self, payload: &[u8]) -> Result<Map<String, Value>, Rejection> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        let value = match self {
            Self::Json => serde_json::from_slice::<Value>(payload)
                .map_err(|_| Rejection::invalid_payload("the payload is not valid JSON"))?,
            Self::Cbor => cbor::decode(payload)
                .map_err(|_| Rejection::invalid_payload("the payload is not valid CBOR"))?,
        };
        match value {
            Value::Object(map) => Ok(map),
            _ => Err(Rejection::invalid_payload("the payload is not a map")),
        }
    }

    fn encode(self, body: &Value) -> Vec<u8> {
        match self {
            Self::Json => body.to_string().into_bytes(),
            Self::Cbor => cbor::encode(body),
        }
    }
}

// ------------------------------------------------------------------------------------------
// rejections
// ------------------------------------------------------------------------------------------

const INVALID_PAYLOAD: &str = "InvalidPayload";
const INVALID_CSR: &str = "InvalidCSR";
const INVALID_OWNERSHIP_TOKEN: &str = "InvalidCertificateOwnershipToken";
const INVALID_PARAMETERS: &str = "InvalidParameters";
const RESOURCE_NOT_FOUND: &str = "ResourceNotFound";
const INTERNAL_FAILURE: &str = "InternalFailure";

/// A `/rejected` answer.
#[derive(Debug)]
struct Rejection {
    status_code: u16,
    error_code: &'static str,
    error_message: String,
}

impl Rejection {
    fn new(status_code: u16, error_code: &'static str, error_message: impl Into<String>) -> Self {
        Self {
            status_code,
            error_code,
            error_message: error_message.into(),
        }
    }

    fn invalid_payload(message: &str) -> Self {
        Self::new(400, INVALID_PAYLOAD, message)
    }

    fn internal(message: &str) -> Self {
        Self::new(500, INTERNAL_FAILURE, message)
    }

    fn to_json(&self) -> Value {
        json!({
            "statusCode": self.status_code,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
        })
    }
}

// ------------------------------------------------------------------------------------------
// templates
// ------------------------------------------------------------------------------------------

/// A parsed provisioning template: the expressions that `RegisterThing` evaluates.
#[derive(Debug, Clone)]
struct Template {
    parameters: BTreeMap<String, Parameter>,
    thing_name: Value,
    attributes: Option<Value>,
    certificate_id: Value,
    device_configuration: Option<Value>,
}

/// One entry of `Parameters`.
#[derive(Debug, Clone)]
struct Parameter {
    kind: ParameterKind,
    default: Option<String>,
    allowed_values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParameterKind {
    String,
    Number,
}

/// What a template evaluates to for one `RegisterThing`.
#[derive(Debug, Clone, PartialEq)]
struct Provisioned {
    thing_name: String,
    attributes: Map<String, Value>,
    device_configuration: Value,
}

impl Template {
    fn parse(body: &Value) -> Result<Self, String> {
        let body = body.as_object().ok_or("the body is not a JSON object")?;
        if body.contains_key("Conditions") {
            return Err("Conditions are not supported".to_owned());
        }
        let parameters = match body.get("Parameters") {
            None => BTreeMap::new(),
            Some(Value::Object(entries)) => entries
                .iter()
                .map(|(name, spec)| Ok((name.clone(), Parameter::parse(name, spec)?)))
                .collect::<Result<_, String>>()?,
            Some(_) => return Err("Parameters is not a JSON object".to_owned()),
        };
        let resources = body
            .get("Resources")
            .and_then(Value::as_object)
            .ok_or("Resources is missing or not a JSON object")?;
        let mut thing = None;
        let mut certificate = None;
        for (logical_name, resource) in resources {
            if resource.get("Condition").is_some() {
                return Err(format!(
                    "resource {logical_name}: Condition is not supported"
                ));
            }
            let properties = resource
                .get("Properties")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("resource {logical_name}: Properties is missing"))?;
            match resource.get("Type").and_then(Value::as_str) {
                Some("AWS::IoT::Thing") if thing.is_none() => thing = Some(properties),
                Some("AWS::IoT::Certificate") if certificate.is_none() => {
                    certificate = Some(properties);
                }
                Some("AWS::IoT::Thing" | "AWS::IoT::Certificate") => {
                    return Err(format!(
                        "resource {logical_name}: only one thing and one certificate are supported"
                    ));
                }
                Some("AWS::IoT::Policy") => {}
                other => {
                    return Err(format!(
                        "resource {logical_name}: type {other:?} is not supported"
                    ))
                }
            }
        }
        let thing = thing.ok_or("no AWS::IoT::Thing resource")?;
        let certificate = certificate.ok_or("no AWS::IoT::Certificate resource")?;
        match certificate.get("Status").and_then(Value::as_str) {
            None => {}
            Some(status) if status.eq_ignore_ascii_case("active") => {}
            Some(status) => {
                return Err(format!(
                    "certificate Status {status:?} is not supported (only Active)"
                ))
            }
        }
        let template = Self {
            parameters,
            thing_name: thing
                .get("ThingName")
                .cloned()
                .ok_or("the thing has no ThingName")?,
            attributes: thing.get("AttributePayload").cloned(),
            certificate_id: certificate
                .get("CertificateId")
                .cloned()
                .ok_or("the certificate has no CertificateId")?,
            device_configuration: body.get("DeviceConfiguration").cloned(),
        };
        template.check_expressions()?;
        Ok(template)
    }

    /// Evaluates every expression once with placeholder parameter values, so an unknown
    /// `Ref` or an unsupported function is refused when the template is added.
    fn check_expressions(&self) -> Result<(), String> {
        let lookup = |name: &str| {
            (name == CERTIFICATE_ID_PARAMETER || self.parameters.contains_key(name))
                .then(String::new)
        };
        let expressions = [
            Some(&self.thing_name),
            self.attributes.as_ref(),
            Some(&self.certificate_id),
            self.device_configuration.as_ref(),
        ];
        for expression in expressions.into_iter().flatten() {
            evaluate(expression, &lookup)?;
        }
        Ok(())
    }

    fn evaluate(
        &self,
        supplied: &Map<String, Value>,
        certificate_id: &str,
    ) -> Result<Provisioned, String> {
        let mut values = HashMap::new();
        for (name, parameter) in &self.parameters {
            if name != CERTIFICATE_ID_PARAMETER {
                values.insert(name.as_str(), parameter.value(name, supplied.get(name))?);
            }
        }
        values.insert(CERTIFICATE_ID_PARAMETER, certificate_id.to_owned());
        let lookup = |name: &str| values.get(name).cloned();

        if evaluate(&self.certificate_id, &lookup)? != Value::String(certificate_id.to_owned()) {
            return Err(format!(
                "the certificate's CertificateId must be {{\"Ref\": \"{CERTIFICATE_ID_PARAMETER}\"}}"
            ));
        }
        let thing_name = match evaluate(&self.thing_name, &lookup)? {
            Value::String(name) if is_valid_thing_name(&name) => name,
            other => {
                return Err(format!(
                    "ThingName {other} is not valid: 1 to {MAX_THING_NAME} characters of [a-zA-Z0-9:_-]"
                ))
            }
        };
        let attributes = match self.attributes.as_ref().map(|a| evaluate(a, &lookup)) {
            None => Map::new(),
            Some(Ok(Value::Object(attributes))) => attributes
                .into_iter()
                .map(|(key, value)| Ok((key, Value::String(scalar_text(&value)?))))
                .collect::<Result<_, String>>()?,
            Some(Ok(_)) => return Err("AttributePayload is not a map".to_owned()),
            Some(Err(e)) => return Err(e),
        };
        let device_configuration = match &self.device_configuration {
            None => Value::Object(Map::new()),
            Some(configuration) => evaluate(configuration, &lookup)?,
        };
        Ok(Provisioned {
            thing_name,
            attributes,
            device_configuration,
        })
    }
}

impl Parameter {
    fn parse(name: &str, spec: &Value) -> Result<Self, String> {
        let spec = spec
            .as_object()
            .ok_or_else(|| format!("parameter {name} is not a JSON object"))?;
        let kind = match spec.get("Type").and_then(Value::as_str) {
            Some("String") => ParameterKind::String,
            Some("Number") => ParameterKind::Number,
            other => {
                return Err(format!(
                    "parameter {name}: Type {other:?} is not supported (String or Number)"
                ))
            }
        };
        if spec.contains_key("AllowedPattern") {
            return Err(format!("parameter {name}: AllowedPattern is not supported"));
        }
        let default = spec
            .get("Default")
            .map(scalar_text)
            .transpose()
            .map_err(|e| format!("parameter {name}: Default {e}"))?;
        let allowed_values = match spec.get("AllowedValues") {
            None => None,
            Some(Value::Array(values)) => Some(
                values
                    .iter()
                    .map(scalar_text)
                    .collect::<Result<_, String>>()
                    .map_err(|e| format!("parameter {name}: AllowedValues {e}"))?,
            ),
            Some(_) => return Err(format!("parameter {name}: AllowedValues is not a list")),
        };
        let parameter = Self {
            kind,
            default,
            allowed_values,
        };
        if let Some(default) = &parameter.default {
            parameter.check(name, default.clone())?;
        }
        Ok(parameter)
    }

    /// The value of this parameter for a request: the supplied one, else the default.
    fn value(&self, name: &str, supplied: Option<&Value>) -> Result<String, String> {
        match supplied {
            None | Some(Value::Null) => self
                .default
                .clone()
                .ok_or_else(|| format!("Missing required parameter {name}")),
            Some(value) => self.check(
                name,
                scalar_text(value).map_err(|e| format!("parameter {name} {e}"))?,
            ),
        }
    }

    fn check(&self, name: &str, value: String) -> Result<String, String> {
        if self.kind == ParameterKind::Number && value.trim().parse::<f64>().is_err() {
            return Err(format!("parameter {name} must be a Number"));
        }
        if let Some(allowed) = &self.allowed_values {
            if !allowed.contains(&value) {
                return Err(format!("parameter {name} is not one of its AllowedValues"));
            }
        }
        Ok(value)
    }
}

fn is_valid_thing_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_THING_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
}

/// The text of a string, number or boolean (template parameters are strings in AWS).
fn scalar_text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("must be a string, a number or a boolean".to_owned()),
    }
}

/// Evaluates a template expression: `Ref`, `Fn::Join` and `Fn::Sub` are resolved, maps and
/// lists are evaluated member by member, other values are literals. `lookup` gives a
/// parameter's value, `None` for an unknown name.
fn evaluate(expression: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    match expression {
        Value::Object(map) if map.len() == 1 => {
            let Some((key, argument)) = map.iter().next() else {
                return Ok(Value::Object(Map::new()));
            };
            match key.as_str() {
                "Ref" => {
                    let name = argument.as_str().ok_or("Ref takes a parameter name")?;
                    lookup(name)
                        .map(Value::String)
                        .ok_or_else(|| format!("Ref to an unknown parameter {name}"))
                }
                "Fn::Join" => join(argument, lookup).map(Value::String),
                "Fn::Sub" => substitute(argument, lookup).map(Value::String),
                function if function.starts_with("Fn::") => {
                    Err(format!("{function} is not supported"))
                }
                _ => Ok(Value::Object(
                    [(key.clone(), evaluate(argument, lookup)?)]
                        .into_iter()
                        .collect(),
                )),
            }
        }
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| Ok((key.clone(), evaluate(value, lookup)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        Value::Array(items) => items
            .iter()
            .map(|item| evaluate(item, lookup))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        literal => Ok(literal.clone()),
    }
}

/// `{"Fn::Join": [separator, [parts...]]}`.
fn join(argument: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let usage = "Fn::Join takes [separator, [values...]]";
    let [separator, parts] = argument.as_array().map(Vec::as_slice).unwrap_or_default() else {
        return Err(usage.to_owned());
    };
    let (Some(separator), Some(parts)) = (separator.as_str(), parts.as_array()) else {
        return Err(usage.to_owned());
    };
    let parts = parts
        .iter()
        .map(|part| {
            scalar_text(&evaluate(part, lookup)?).map_err(|e| format!("Fn::Join value {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(parts.join(separator))
}

/// `{"Fn::Sub": "text ${Parameter} text"}`; `${!Literal}` stands for `${Literal}`.
fn substitute(argument: &Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut rest = argument
        .as_str()
        .ok_or("Fn::Sub is supported in its string form only")?;
    let mut out = String::new();
    while let Some(start) = rest.find("${") {
        let (before, after) = rest.split_at(start);
        out.push_str(before);
        let after = after.get(2..).unwrap_or_default();
        let end = after.find('}').ok_or("Fn::Sub has an unclosed ${")?;
        let (name, tail) = after.split_at(end);
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            out.push_str(
                &lookup(name)
                    .ok_or_else(|| format!("Fn::Sub refers to an unknown parameter {name}"))?,
            );
        }
        rest = tail.get(1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every call; issues certificates `cert-1`, `cert-2`, ...
    #[derive(Default)]
    struct RecordingBackend {
        calls: Vec<String>,
        registered: Vec<(String, String, Map<String, Value>)>,
        fail_registry: bool,
    }

    impl RecordingBackend {
        /// Called after the call was recorded: the first certificate is `cert-0`.
        fn next_id(&self) -> String {
            let issued = self
                .calls
                .iter()
                .filter(|c| !c.starts_with("register"))
                .count();
            format!("cert-{}", issued - 1)
        }
    }

    impl ProvisioningBackend for RecordingBackend {
        fn create_keys_and_certificate(&mut self) -> Result<NewCertificate, String> {
            self.calls.push("create_keys".into());
            Ok(NewCertificate {
                certificate_id: self.next_id(),
                certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                    .into(),
                private_key_pem: Some("SECRET-KEY-PEM".into()),
            })
        }

        fn create_certificate_from_csr(&mut self, csr_pem: &str) -> Result<NewCertificate, String> {
            self.calls.push(format!("csr:{csr_pem}"));
            if !csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----") {
                return Err("the CSR is not a PEM certificate request".into());
            }
            Ok(NewCertificate {
                certificate_id: self.next_id(),
                certificate_pem: "CSR-CERT-PEM".into(),
                private_key_pem: None,
            })
        }

        fn register_thing(
            &mut self,
            thing_name: &str,
            certificate_id: &str,
            attributes: &Map<String, Value>,
        ) -> Result<(), String> {
            self.calls
                .push(format!("register:{thing_name}:{certificate_id}"));
            if self.fail_registry {
                return Err("registry unavailable".into());
            }
            self.registered
                .push((thing_name.into(), certificate_id.into(), attributes.clone()));
            Ok(())
        }
    }

    const CSR: &str =
        "-----BEGIN CERTIFICATE REQUEST-----\nMIIC\n-----END CERTIFICATE REQUEST-----\n";

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn fleet_template() -> Value {
        json!({
            "Parameters": {
                "SerialNumber": {"Type": "String"},
                "Model": {"Type": "String", "Default": "m1", "AllowedValues": ["m1", "m2"]},
                "Port": {"Type": "Number", "Default": 8883},
                "AWS::IoT::Certificate::Id": {"Type": "String"}
            },
            "Resources": {
                "thing": {
                    "Type": "AWS::IoT::Thing",
                    "Properties": {
                        "ThingName": {"Fn::Join": ["-", ["sensor", {"Ref": "SerialNumber"}]]},
                        "AttributePayload": {"serial": {"Ref": "SerialNumber"}, "model": {"Ref": "Model"}, "v": 2},
                        "ThingGroups": ["fleet"]
                    },
                    "OverrideSettings": {"AttributePayload": "MERGE"}
                },
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"}
                },
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "DevicePolicy"}}
            },
            "DeviceConfiguration": {
                "endpoint": {"Fn::Sub": "${Model}.local:${Port} ${!kept}"},
                "cert": {"Ref": "AWS::IoT::Certificate::Id"},
                "fixed": ["a", 1]
            }
        })
    }

    fn service() -> ProvisioningService {
        let mut s = ProvisioningService::new();
        s.add_template("fleet", fleet_template()).unwrap();
        s
    }

    fn decode(format: Format, out: &Outbound) -> Value {
        match format {
            Format::Json => serde_json::from_slice(&out.payload).unwrap(),
            Format::Cbor => cbor::decode(&out.payload).unwrap(),
        }
    }

    fn encode(format: Format, body: &Value) -> Vec<u8> {
        format.encode(body)
    }

    /// One request → exactly one answer; returns (topic, decoded body).
    fn call(
        s: &mut ProvisioningService,
        backend: &mut RecordingBackend,
        topic: &str,
        body: Option<&Value>,
        now: SystemTime,
    ) -> (String, Value) {
        let format = if topic.ends_with("/cbor") {
            Format::Cbor
        } else {
            Format::Json
        };
        let payload = body.map(|b| encode(format, b)).unwrap_or_default();
        let out = s.handle(topic, &payload, now, backend);
        assert_eq!(out.len(), 1, "{out:?}");
        (out[0].topic.clone(), decode(format, &out[0]))
    }

    #[test]
    fn handles_only_the_request_topics() {
        for topic in [
            "$aws/certificates/create/json",
            "$aws/certificates/create/cbor",
            "$aws/certificates/create-from-csr/json",
            "$aws/certificates/create-from-csr/cbor",
            "$aws/provisioning-templates/fleet/provision/json",
            "$aws/provisioning-templates/fleet/provision/cbor",
        ] {
            assert!(ProvisioningService::handles(topic), "{topic}");
        }
        for topic in [
            "$aws/certificates/create/json/accepted",
            "$aws/certificates/create/xml",
            "$aws/certificates/create",
            "$aws/provisioning-templates//provision/json",
            "$aws/provisioning-templates/a/b/provision/json",
            "$aws/provisioning-templates/fleet/provision/json/rejected",
            "$aws/things/t/shadow/get",
        ] {
            assert!(!ProvisioningService::handles(topic), "{topic}");
        }
        let mut backend = RecordingBackend::default();
        assert!(service().handle("a/b", b"", t0(), &mut backend).is_empty());
        assert!(backend.calls.is_empty());
    }

    #[test]
    fn create_keys_then_register_thing_in_both_formats() {
        for fmt in ["json", "cbor"] {
            let mut s = service();
            let mut backend = RecordingBackend::default();
            let create = format!("$aws/certificates/create/{fmt}");
            let (topic, created) = call(&mut s, &mut backend, &create, None, t0());
            assert_eq!(topic, format!("{create}/accepted"));
            assert_eq!(created["certificateId"], "cert-0");
            assert_eq!(created["privateKey"], "SECRET-KEY-PEM");
            assert!(created["certificatePem"]
                .as_str()
                .unwrap()
                .contains("BEGIN CERTIFICATE"));
            let token = created["certificateOwnershipToken"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(token.len(), 64);

            let provision = format!("$aws/provisioning-templates/fleet/provision/{fmt}");
            let request =
                json!({"certificateOwnershipToken": token, "parameters": {"SerialNumber": "42"}});
            let (topic, registered) = call(&mut s, &mut backend, &provision, Some(&request), t0());
            assert_eq!(topic, format!("{provision}/accepted"), "{registered}");
            assert_eq!(
                registered,
                json!({
                    "deviceConfiguration": {"endpoint": "m1.local:8883 ${kept}", "cert": "cert-0", "fixed": ["a", 1]},
                    "thingName": "sensor-42"
                })
            );
            assert_eq!(backend.calls, ["create_keys", "register:sensor-42:cert-0"]);
            let (_, _, attributes) = &backend.registered[0];
            assert_eq!(
                Value::Object(attributes.clone()),
                json!({"serial": "42", "model": "m1", "v": "2"})
            );
        }
    }

    #[test]
    fn create_from_csr_in_both_formats_has_no_private_key() {
        for fmt in ["json", "cbor"] {
            let mut s = service();
            let mut backend = RecordingBackend::default();
            let topic = format!("$aws/certificates/create-from-csr/{fmt}");
            let request = json!({"certificateSigningRequest": CSR});
            let (answer, body) = call(&mut s, &mut backend, &topic, Some(&request), t0());
            assert_eq!(answer, format!("{topic}/accepted"));
            assert_eq!(body["certificateId"], "cert-0");
            assert_eq!(body["certificatePem"], "CSR-CERT-PEM");
            assert!(body.get("privateKey").is_none());
            assert_eq!(backend.calls, [format!("csr:{CSR}")]);

            // The token registers the CSR's certificate.
            let request = json!({"certificateOwnershipToken": body["certificateOwnershipToken"], "parameters": {"SerialNumber": "7", "Model": "m2"}});
            let provision = format!("$aws/provisioning-templates/fleet/provision/{fmt}");
            let (answer, body) = call(&mut s, &mut backend, &provision, Some(&request), t0());
            assert_eq!(answer, format!("{provision}/accepted"));
            assert_eq!(body["thingName"], "sensor-7");
            assert_eq!(backend.registered[0].1, "cert-0");
        }
    }

    #[test]
    fn bad_csr_and_missing_csr_are_rejected_in_both_formats() {
        for fmt in ["json", "cbor"] {
            let mut s = service();
            let mut backend = RecordingBackend::default();
            let topic = format!("$aws/certificates/create-from-csr/{fmt}");
            let (answer, body) = call(
                &mut s,
                &mut backend,
                &topic,
                Some(&json!({"certificateSigningRequest": "not a csr"})),
                t0(),
            );
            assert_eq!(answer, format!("{topic}/rejected"));
            assert_eq!(body["statusCode"], 400);
            assert_eq!(body["errorCode"], "InvalidCSR");
            assert_eq!(
                body["errorMessage"],
                "the CSR is not a PEM certificate request"
            );

            let (answer, body) = call(&mut s, &mut backend, &topic, Some(&json!({})), t0());
            assert_eq!(answer, format!("{topic}/rejected"));
            assert_eq!(body["errorCode"], "InvalidPayload");
            assert_eq!(backend.calls.len(), 1, "no backend call without a CSR");
        }
    }

    #[test]
    fn malformed_payloads_are_invalid_payload() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        for (topic, payload) in [
            ("$aws/certificates/create-from-csr/json", &b"{not json"[..]),
            ("$aws/certificates/create-from-csr/json", b"[1]"),
            ("$aws/certificates/create-from-csr/cbor", &[0xa1, 0x61][..]),
            ("$aws/provisioning-templates/fleet/provision/json", b"\"x\""),
            (
                "$aws/provisioning-templates/fleet/provision/cbor",
                &[0x01][..],
            ),
        ] {
            let out = s.handle(topic, payload, t0(), &mut backend);
            assert_eq!(out[0].topic, format!("{topic}/rejected"));
            let format = if topic.ends_with("cbor") {
                Format::Cbor
            } else {
                Format::Json
            };
            let body = decode(format, &out[0]);
            assert_eq!(body["statusCode"], 400, "{topic}");
            assert_eq!(body["errorCode"], "InvalidPayload", "{topic}");
        }
        assert!(backend.calls.is_empty());
    }

    #[test]
    fn unknown_template_is_404() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let topic = "$aws/provisioning-templates/nope/provision/json";
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "1"}});
        let (answer, body) = call(&mut s, &mut backend, topic, Some(&request), t0());
        assert_eq!(answer, format!("{topic}/rejected"));
        assert_eq!(
            body,
            json!({"statusCode": 404, "errorCode": "ResourceNotFound", "errorMessage": "Template nope not found"})
        );
        assert_eq!(backend.calls, ["create_keys"]);
    }

    #[test]
    fn bad_missing_and_expired_tokens_are_rejected() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let topic = "$aws/provisioning-templates/fleet/provision/json";
        let (_, body) = call(
            &mut s,
            &mut backend,
            topic,
            Some(
                &json!({"certificateOwnershipToken": "forged", "parameters": {"SerialNumber": "1"}}),
            ),
            t0(),
        );
        assert_eq!(body["statusCode"], 400);
        assert_eq!(body["errorCode"], "InvalidCertificateOwnershipToken");
        let (_, body) = call(
            &mut s,
            &mut backend,
            topic,
            Some(&json!({"parameters": {"SerialNumber": "1"}})),
            t0(),
        );
        assert_eq!(body["errorCode"], "InvalidPayload");

        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "1"}});
        let later = t0() + Duration::from_secs(2 * 3600);
        let (answer, body) = call(&mut s, &mut backend, topic, Some(&request), later);
        assert_eq!(answer, format!("{topic}/rejected"));
        assert_eq!(body["errorCode"], "InvalidCertificateOwnershipToken");
        assert_eq!(
            body["errorMessage"],
            "certificateOwnershipToken has expired"
        );
        // Forgotten once expired.
        let (_, body) = call(&mut s, &mut backend, topic, Some(&request), later);
        assert_eq!(
            body["errorMessage"],
            "certificateOwnershipToken is not valid"
        );
        assert_eq!(
            backend.calls,
            ["create_keys"],
            "the registry was never called"
        );
    }

    #[test]
    fn a_token_works_until_it_expires_and_may_be_retried() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let topic = "$aws/provisioning-templates/fleet/provision/json";
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "1"}});
        let almost = t0() + Duration::from_secs(3599);
        for _ in 0..2 {
            let (answer, _) = call(&mut s, &mut backend, topic, Some(&request), almost);
            assert_eq!(answer, format!("{topic}/accepted"));
        }
        assert_eq!(backend.registered.len(), 2);
    }

    #[test]
    fn parameter_problems_are_invalid_parameters() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let topic = "$aws/provisioning-templates/fleet/provision/cbor";
        for (parameters, message) in [
            (json!({}), "Missing required parameter SerialNumber"),
            (json!({"SerialNumber": "1", "Model": "m9"}), "parameter Model is not one of its AllowedValues"),
            (json!({"SerialNumber": "1", "Port": "eighty"}), "parameter Port must be a Number"),
            (json!({"SerialNumber": {"nested": 1}}), "parameter SerialNumber must be a string, a number or a boolean"),
            (json!({"SerialNumber": "bad name!"}), "ThingName \"sensor-bad name!\" is not valid: 1 to 128 characters of [a-zA-Z0-9:_-]"),
        ] {
            let (_, created) = call(&mut s, &mut backend, "$aws/certificates/create/cbor", None, t0());
            let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": parameters});
            let (answer, body) = call(&mut s, &mut backend, topic, Some(&request), t0());
            assert_eq!(answer, format!("{topic}/rejected"));
            assert_eq!(body["statusCode"], 400);
            assert_eq!(body["errorCode"], "InvalidParameters");
            assert_eq!(body["errorMessage"], message);
        }
        assert!(backend.registered.is_empty());
    }

    #[test]
    fn a_supplied_certificate_id_parameter_cannot_redirect_the_registration() {
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "1", "AWS::IoT::Certificate::Id": "someone-else"}});
        let (_, body) = call(
            &mut s,
            &mut backend,
            "$aws/provisioning-templates/fleet/provision/json",
            Some(&request),
            t0(),
        );
        assert_eq!(body["deviceConfiguration"]["cert"], "cert-0");
        assert_eq!(backend.registered[0].1, "cert-0");
    }

    #[test]
    fn backend_failures_are_500() {
        let mut s = service();
        let mut backend = RecordingBackend {
            fail_registry: true,
            ..RecordingBackend::default()
        };
        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"], "parameters": {"SerialNumber": "1"}});
        let (_, body) = call(
            &mut s,
            &mut backend,
            "$aws/provisioning-templates/fleet/provision/json",
            Some(&request),
            t0(),
        );
        assert_eq!(
            body,
            json!({"statusCode": 500, "errorCode": "InternalFailure", "errorMessage": "registry unavailable"})
        );
    }

    #[test]
    fn a_template_without_device_configuration_answers_an_empty_map() {
        let mut s = ProvisioningService::new();
        s.add_template(
            "plain",
            json!({"Resources": {
                "t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "fixed-thing"}},
                "c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}}
            }}),
        )
        .unwrap();
        assert!(s.has_template("plain"));
        assert!(!s.has_template("fleet"));
        let mut backend = RecordingBackend::default();
        let (_, created) = call(
            &mut s,
            &mut backend,
            "$aws/certificates/create/json",
            None,
            t0(),
        );
        let request = json!({"certificateOwnershipToken": created["certificateOwnershipToken"]});
        let (_, body) = call(
            &mut s,
            &mut backend,
            "$aws/provisioning-templates/plain/provision/json",
            Some(&request),
            t0(),
        );
        assert_eq!(
            body,
            json!({"deviceConfiguration": {}, "thingName": "fixed-thing"})
        );
        assert!(backend.registered[0].2.is_empty());
    }

    #[test]
    fn templates_we_cannot_evaluate_are_refused_when_added() {
        let thing =
            json!({"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Name"}}});
        let cert = json!({"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}}});
        let params = json!({"Name": {"Type": "String"}});
        let mut s = ProvisioningService::new();
        assert!(s
            .add_template(
                "ok",
                json!({"Parameters": params, "Resources": {"t": thing, "c": cert}})
            )
            .is_ok());
        for (body, needle) in [
            (json!([]), "not a JSON object"),
            (json!({"Resources": {"c": cert}}), "no AWS::IoT::Thing"),
            (
                json!({"Parameters": params, "Resources": {"t": thing}}),
                "no AWS::IoT::Certificate",
            ),
            (
                json!({"Resources": {"t": thing, "c": cert}}),
                "unknown parameter Name",
            ),
            (
                json!({"Parameters": params, "Conditions": {}, "Resources": {"t": thing, "c": cert}}),
                "Conditions",
            ),
            (
                json!({"Parameters": {"Name": {"Type": "List<String>"}}, "Resources": {"t": thing, "c": cert}}),
                "Type",
            ),
            (
                json!({"Parameters": params, "Resources": {"t": thing, "c": cert, "x": {"Type": "AWS::S3::Bucket", "Properties": {}}}}),
                "not supported",
            ),
            (
                json!({"Parameters": params, "Resources": {"t": thing, "c": cert}, "DeviceConfiguration": {"a": {"Fn::If": ["c", "x", "y"]}}}),
                "Fn::If is not supported",
            ),
            (
                json!({"Parameters": params, "Resources": {"t": thing, "c": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Inactive"}}}}),
                "Status",
            ),
            (
                json!({"Parameters": {"Name": {"Type": "String", "Default": "a", "AllowedValues": ["b"]}}, "Resources": {"t": thing, "c": cert}}),
                "AllowedValues",
            ),
        ] {
            let err = s.add_template("t", body.clone()).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        assert!(!s.has_template("t"));
        assert!(s
            .add_template("bad/name", json!({}))
            .unwrap_err()
            .contains("not valid"));
        assert!(s.add_template(&"x".repeat(37), json!({})).is_err());
    }

    #[test]
    fn join_and_sub_edge_cases() {
        let lookup = |name: &str| (name == "P").then(|| "v".to_owned());
        assert_eq!(
            evaluate(&json!({"Fn::Join": ["", []]}), &lookup).unwrap(),
            json!("")
        );
        assert_eq!(
            evaluate(&json!({"Fn::Join": [",", ["a", 1, {"Ref": "P"}]]}), &lookup).unwrap(),
            json!("a,1,v")
        );
        assert!(evaluate(&json!({"Fn::Join": ["-"]}), &lookup).is_err());
        assert!(evaluate(&json!({"Fn::Join": ["-", [{"k": 1}]]}), &lookup).is_err());
        assert_eq!(
            evaluate(&json!({"Fn::Sub": "${P}${P}-${!P}"}), &lookup).unwrap(),
            json!("vv-${P}")
        );
        assert!(evaluate(&json!({"Fn::Sub": "${P"}), &lookup).is_err());
        assert!(evaluate(&json!({"Fn::Sub": "${Q}"}), &lookup).is_err());
        assert_eq!(
            evaluate(&json!({"k": {"Ref": "P"}}), &lookup).unwrap(),
            json!({"k": "v"})
        );
        assert_eq!(evaluate(&json!({}), &lookup).unwrap(), json!({}));
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let certificate = NewCertificate {
            certificate_id: "abc".into(),
            certificate_pem: "PEM".into(),
            private_key_pem: Some("SECRET-KEY-PEM".into()),
        };
        let shown = format!("{certificate:?}");
        assert!(shown.contains("abc") && shown.contains("<redacted>"));
        assert!(!shown.contains("SECRET"));
        let mut s = service();
        let mut backend = RecordingBackend::default();
        let out = s.handle("$aws/certificates/create/json", b"", t0(), &mut backend);
        let created: Value = serde_json::from_slice(&out[0].payload).unwrap();
        let token = created["certificateOwnershipToken"].as_str().unwrap();
        let shown = format!("{s:?}");
        assert!(
            shown.contains("ownership_tokens: 1") && shown.contains("fleet"),
            "{shown}"
        );
        assert!(!shown.contains(token));
    }
}
