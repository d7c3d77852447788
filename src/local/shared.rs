//! What every listener and connection of one core shares: configuration, broker, registry,
//! services, authorizers, the event log and the stop signal.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::sync::watch;

use crate::local::authorizer_request::{self, AuthProtocol};
use crate::local::authorizers::{AuthorizerVerdict, Authorizers};
use crate::local::broker::Broker;
use crate::local::config::LocalConfig;
use crate::local::events::EventLog;
use crate::local::provisioning::ProvisioningService;
use crate::local::registry::{CertificateRole, Registry};
use crate::local::reserved_topics;
use crate::local::services::Services;

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An X.509 client certificate (its id), and what it may do.
    Certificate {
        /// Lowercase hex SHA-256 of the DER.
        certificate_id: String,
        /// Device or provisioning claim.
        role: CertificateRole,
    },
    /// SigV4: the access key id.
    AccessKey(String),
    /// A custom authorizer's `principalId`.
    Authorizer(String),
}

impl Principal {
    /// The `principalIdentifier` of lifecycle events.
    #[must_use]
    pub fn identifier(&self) -> &str {
        match self {
            Self::Certificate { certificate_id, .. } => certificate_id,
            Self::AccessKey(k) | Self::Authorizer(k) => k,
        }
    }

    /// Whether this principal may publish to `topic` or subscribe to it as a filter.
    #[must_use]
    pub fn may_use(&self, topic: &str) -> bool {
        match self {
            Self::Certificate {
                role: CertificateRole::Claim { template },
                ..
            } => reserved_topics::claim_may_use(template, topic),
            _ => true,
        }
    }
}

/// The state of one running core.
#[derive(Debug)]
pub struct CoreShared {
    /// How it was configured.
    pub config: LocalConfig,
    /// Sessions, subscriptions, retained messages.
    pub broker: Broker,
    /// Things, certificates, credentials.
    pub registry: Arc<Registry>,
    /// Shadow, jobs, provisioning.
    pub services: Mutex<Services>,
    /// Custom authorizers.
    pub authorizers: Authorizers,
    /// What happened, for tests.
    pub events: EventLog,
    stop: watch::Sender<bool>,
}

impl CoreShared {
    /// The shared state of a new core.
    #[must_use]
    pub fn new(config: LocalConfig, registry: Arc<Registry>) -> Self {
        Self {
            broker: Broker::new(config.clone()),
            config,
            registry,
            services: Mutex::new(Services::default()),
            authorizers: Authorizers::default(),
            events: EventLog::default(),
            stop: watch::channel(false).0,
        }
    }

    /// A receiver that changes when the core stops.
    #[must_use]
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Signals every listener and connection to stop.
    pub fn signal_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Whether the core was told to stop.
    #[must_use]
    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Routes a message from the core or a client to the subscribers.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS) {
        self.broker.route(topic, payload, qos);
    }

    /// Routes a JSON message the core itself publishes (lifecycle events) at QoS 1.
    pub fn publish_json(&self, topic: &str, payload: &serde_json::Value) {
        let bytes = Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
        self.broker.route(topic, bytes, QoS::AtLeastOnce);
    }

    /// Runs the service that handles `topic` for `client_id`, if any, and routes its
    /// responses: shadow and jobs responses to every subscriber (as AWS does), fleet
    /// provisioning's to the requesting client only (AWS answers on the requesting connection;
    /// `CreateKeysAndCertificate` carries a private key).
    pub fn run_services(&self, client_id: &str, topic: &str, payload: &[u8]) {
        if !Services::handles(topic) {
            return;
        }
        let responses = self
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .handle(topic, payload, &self.registry);
        let private = ProvisioningService::handles(topic);
        for r in responses {
            let payload = Bytes::from(r.payload);
            if private {
                self.broker
                    .route_to(client_id, &r.topic, payload, QoS::AtLeastOnce);
            } else {
                self.broker.route(&r.topic, payload, QoS::AtLeastOnce);
            }
        }
    }

    /// Runs the custom authorizer for credentials in CONNECT (and the upgrade request's
    /// headers and query on WSS). `None`: refused (unknown authorizer, denied, failed or timed
    /// out).
    pub async fn authorize_connect(
        &self,
        protocol: AuthProtocol,
        username: Option<&str>,
        password: Option<&[u8]>,
        client_id: &str,
        headers: Vec<(String, String)>,
        query: Vec<(String, String)>,
    ) -> Option<AuthorizerVerdict> {
        let find = |name: Option<&str>| self.authorizers.find(name);
        let mut request = match authorizer_request::from_mqtt(username, password, client_id, &find)
        {
            Ok(r) => r,
            Err(e) => {
                log::info!("local core: custom authorization refused: {e}");
                return None;
            }
        };
        request.protocol = protocol;
        request.headers = headers;
        request.query = query;
        self.decide(request).await
    }

    /// Asks the request's authorizer, bounded by the authorizer timeout.
    pub async fn decide(
        &self,
        request: authorizer_request::AuthorizerRequest,
    ) -> Option<AuthorizerVerdict> {
        let hook = self.authorizers.hook(&request.authorizer)?;
        match tokio::time::timeout(self.config.authorizer_timeout, hook.authorize(request)).await {
            Ok(Ok(v)) if v.allow => Some(v),
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                log::warn!("local core: custom authorizer failed: {e}");
                None
            }
            Err(_) => {
                log::warn!(
                    "local core: custom authorizer gave no answer within {:?}",
                    self.config.authorizer_timeout
                );
                None
            }
        }
    }
}

/// Resolves once the core is told to stop, including when it already was (a receiver made
/// after the signal still sees it, unlike `changed()`).
pub async fn stopped(signal: &mut watch::Receiver<bool>) {
    let _ = signal.wait_for(|stopped| *stopped).await;
}
