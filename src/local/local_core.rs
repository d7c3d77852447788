//! [`LocalCore`]: one running embedded AWS IoT Core: its CA, its four listeners, and the API
//! tests and the Python binding drive it with.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use serde_json::{Map, Value};
use tokio::task::JoinHandle;

use crate::local::authorizer_request::AuthorizerSpec;
use crate::local::authorizers::AuthorizerHook;
use crate::local::config::LocalConfig;
use crate::local::error::{LocalError, LocalResult};
use crate::local::events::EventLog;
use crate::local::lifecycle::DisconnectReason;
use crate::local::listener::{self, ListenerKind, ALPN_MQTT, ALPN_MQTT_CA};
use crate::local::pki::{CertificateAuthority, IssuedCertificate};
use crate::local::registry::Registry;
use crate::local::shared::{stopped, CoreShared};
use crate::local::tls_server::{self, CertificateStatus, RegisteredCertificateVerifier};

/// The real ports of a started core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// mTLS.
    pub mqtt: u16,
    /// mTLS with ALPN `x-amzn-mqtt-ca`.
    pub alpn: u16,
    /// TLS with ALPN `mqtt` and a custom authorizer.
    pub custom_auth: u16,
    /// WebSocket over TLS.
    pub wss: u16,
}

/// How often expired persistent sessions are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A running embedded AWS IoT Core. Stop it with [`LocalCore::stop`]; dropping it without
/// stopping signals the stop but does not wait for the connections to close.
#[derive(Debug)]
pub struct LocalCore {
    shared: Arc<CoreShared>,
    ports: Ports,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn parse_status(s: &str) -> LocalResult<CertificateStatus> {
    match s {
        "ACTIVE" => Ok(CertificateStatus::Active),
        "INACTIVE" => Ok(CertificateStatus::Inactive),
        "REVOKED" => Ok(CertificateStatus::Revoked),
        "PENDING_ACTIVATION" => Ok(CertificateStatus::PendingActivation),
        other => Err(LocalError::Config(format!(
            "certificate status must be \"ACTIVE\", \"INACTIVE\", \"REVOKED\" or \
             \"PENDING_ACTIVATION\", not {other:?}"
        ))),
    }
}

impl LocalCore {
    /// Creates the CA and server certificate and binds the four listeners. Call inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// [`LocalError::Config`] for invalid settings, [`LocalError::Io`] if a port cannot be
    /// bound, [`LocalError::Pki`] if the certificates cannot be made.
    pub async fn start(config: LocalConfig) -> LocalResult<Self> {
        config.validate()?;
        let pki = |e: crate::local::pki::PkiError| LocalError::Pki(e.to_string());
        let ca = CertificateAuthority::new("awsiot_rs local AWS IoT Core CA").map_err(pki)?;
        let mut names = Vec::new();
        if !config.host.is_loopback() && !config.host.is_unspecified() {
            names.push(config.host.to_string());
        }
        let identity = ca.server_identity(&names).map_err(pki)?;
        let anchors = [ca.ca_der()];
        let registry = Arc::new(Registry::new(ca));
        let verifier = Arc::new(
            RegisteredCertificateVerifier::new(&anchors, Arc::clone(&registry) as _)
                .map_err(pki)?,
        );
        let mtls =
            tls_server::server_config(&identity, Some(Arc::clone(&verifier)), &[]).map_err(pki)?;
        let mtls_alpn =
            tls_server::server_config(&identity, Some(verifier), &[ALPN_MQTT_CA]).map_err(pki)?;
        let custom = tls_server::server_config(&identity, None, &[ALPN_MQTT]).map_err(pki)?;
        let wss = tls_server::server_config(&identity, None, &[b"http/1.1"]).map_err(pki)?;
        let host = config.host;
        let wanted = [
            (ListenerKind::Mtls, config.mqtt_port, mtls),
            (ListenerKind::MtlsAlpn, config.alpn_port, mtls_alpn),
            (ListenerKind::CustomAuth, config.custom_auth_port, custom),
            (ListenerKind::Wss, config.wss_port, wss),
        ];
        let shared = Arc::new(CoreShared::new(config, registry));
        let mut tasks = Vec::new();
        let mut bound = Vec::new();
        for (kind, port, tls) in wanted {
            match listener::start(kind, SocketAddr::new(host, port), tls, Arc::clone(&shared)).await
            {
                Ok((addr, task)) => {
                    bound.push(addr.port());
                    tasks.push(task);
                }
                Err(e) => {
                    shared.signal_stop();
                    for t in tasks {
                        let _ = t.await;
                    }
                    return Err(LocalError::Io(format!(
                        "cannot listen on {host} port {port} ({kind:?}): {e}"
                    )));
                }
            }
        }
        let sweeper = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut stop = sweeper.shutdown_signal();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SWEEP_EVERY) => sweeper.broker.expire_sessions(),
                    () = stopped(&mut stop) => break,
                }
            }
        }));
        let port = |i: usize| bound.get(i).copied().unwrap_or(0);
        Ok(Self {
            ports: Ports {
                mqtt: port(0),
                alpn: port(1),
                custom_auth: port(2),
                wss: port(3),
            },
            shared,
            tasks: Mutex::new(tasks),
        })
    }

    /// Closes every connection (`SERVER_INITIATED_DISCONNECT`), frees every port, and returns
    /// once all of them are closed. Idempotent.
    pub async fn stop(&self) {
        self.shared.signal_stop();
        let tasks: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for t in tasks {
            let _ = t.await;
        }
        self.shared.events.close();
    }

    /// Whether [`LocalCore::stop`] was called.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.shared.stopping()
    }

    /// The real ports.
    #[must_use]
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The CA certificate (PEM) clients must trust.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        self.shared.registry.ca().ca_pem()
    }

    /// Registers a thing with an ACTIVE device certificate.
    ///
    /// # Errors
    /// [`LocalError::Config`] for an invalid name, [`LocalError::Pki`] if issuing fails.
    pub fn register_thing(
        &self,
        thing_name: &str,
        attributes: Map<String, Value>,
    ) -> LocalResult<IssuedCertificate> {
        self.shared.registry.register_thing(thing_name, attributes)
    }

    /// Sets a certificate's status (`"ACTIVE"`, `"INACTIVE"`, `"REVOKED"`); a certificate
    /// not ACTIVE is refused at the next TLS handshake (open connections stay, as on AWS).
    ///
    /// # Errors
    /// [`LocalError::Config`] for an unknown status, [`LocalError::NotFound`] for an unknown id.
    pub fn certificate_status(&self, certificate_id: &str, status: &str) -> LocalResult<()> {
        self.shared
            .registry
            .set_status(certificate_id, parse_status(status)?)
    }

    /// Adds IAM credentials SigV4 connections may sign with.
    ///
    /// # Errors
    /// [`LocalError::Config`] for an empty key.
    pub fn add_credentials(
        &self,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> LocalResult<()> {
        self.shared
            .registry
            .add_credentials(access_key_id, secret_access_key, session_token)
    }

    /// Adds (or replaces) a custom authorizer; the first added is the default.
    ///
    /// # Errors
    /// [`LocalError::Config`] for an empty name.
    pub fn add_authorizer(
        &self,
        spec: AuthorizerSpec,
        hook: Arc<dyn AuthorizerHook>,
    ) -> LocalResult<()> {
        if spec.name.is_empty() || spec.name.len() > 128 {
            return Err(LocalError::Config(
                "an authorizer name must be 1 to 128 characters".into(),
            ));
        }
        self.shared.authorizers.add(spec, hook);
        Ok(())
    }

    /// Adds a fleet-provisioning template and returns a claim certificate for it.
    ///
    /// # Errors
    /// [`LocalError::Config`] if the template cannot be evaluated.
    pub fn add_provisioning_template(
        &self,
        name: &str,
        body: Value,
        claim_thing: Option<&str>,
    ) -> LocalResult<IssuedCertificate> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .provisioning
            .add_template(name, body)
            .map_err(LocalError::Config)?;
        let claim = claim_thing.map_or_else(|| format!("{name}-claim"), str::to_owned);
        self.shared.registry.add_claim(name, &claim)
    }

    /// Queues a job execution for a thing and publishes the `notify` / `notify-next` messages.
    ///
    /// # Errors
    /// [`LocalError::Config`] for a bad job id or document, or a job id already used.
    pub fn add_job(&self, thing_name: &str, job_id: &str, document: Value) -> LocalResult<()> {
        let out = self
            .shared
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .add_job(thing_name, job_id, document, SystemTime::now())
            .map_err(LocalError::Config)?;
        for o in out {
            self.shared
                .broker
                .route(&o.topic, Bytes::from(o.payload), QoS::AtLeastOnce);
        }
        Ok(())
    }

    /// The document a shadow GET would return, or `None`.
    #[must_use]
    pub fn shadow_document(&self, thing_name: &str, shadow_name: Option<&str>) -> Option<Value> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shadow
            .document(thing_name, shadow_name)
    }

    /// A job execution's state, for inspection.
    #[must_use]
    pub fn job_execution(&self, thing_name: &str, job_id: &str) -> Option<Value> {
        self.shared
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .execution(thing_name, job_id)
    }

    /// The event log.
    #[must_use]
    pub fn events(&self) -> &EventLog {
        &self.shared.events
    }

    /// Closes a client's connection with `reason` (AWS's name); whether it was connected.
    ///
    /// # Errors
    /// [`LocalError::Config`] for a reason AWS does not define.
    pub fn disconnect(&self, client_id: &str, reason: &str) -> LocalResult<bool> {
        let reason = DisconnectReason::parse(reason).ok_or_else(|| {
            LocalError::Config(format!(
                "{reason:?} is not an AWS disconnect reason (e.g. SERVER_INITIATED_DISCONNECT, \
                 API_INITIATED_DISCONNECT, CONNECTION_LOST)"
            ))
        })?;
        Ok(self.shared.broker.kick(client_id, reason))
    }

    /// The client ids connected now, sorted.
    #[must_use]
    pub fn connected_clients(&self) -> Vec<String> {
        self.shared.broker.connected_clients()
    }

    /// Publishes a message as the core (as the AWS console's MQTT test client would).
    pub fn publish(&self, topic: &str, payload: &[u8], qos: u8, retain: bool) {
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let payload = Bytes::copy_from_slice(payload);
        if retain {
            self.shared.broker.retain(topic, &payload);
        }
        self.shared.broker.route(topic, payload, qos);
    }

    /// The broker's counters: (messages routed, deliveries dropped).
    #[must_use]
    pub fn counters(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.shared.broker.stats.routed.load(Ordering::Relaxed),
            self.shared.broker.stats.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for LocalCore {
    fn drop(&mut self) {
        self.shared.signal_stop();
    }
}
