//! The AWS services running inside the core (Device Shadow, fleet provisioning, jobs): which
//! one handles a request topic, and the registry-backed side of fleet provisioning.

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::local::jobs::JobsService;
use crate::local::provisioning::{NewCertificate, ProvisioningBackend, ProvisioningService};
use crate::local::registry::Registry;
use crate::local::service::Outbound;
use crate::local::shadow::ShadowService;
use crate::local::tls_server::CertificateStatus;

/// The in-process services of one core.
#[derive(Debug, Default)]
pub struct Services {
    /// Device Shadow, classic and named.
    pub shadow: ShadowService,
    /// Jobs.
    pub jobs: JobsService,
    /// Fleet provisioning.
    pub provisioning: ProvisioningService,
}

impl Services {
    /// Whether any service handles `topic` (cheap; called for every `$aws` publish).
    #[must_use]
    pub fn handles(topic: &str) -> bool {
        topic.starts_with("$aws/")
            && (ShadowService::handles(topic)
                || JobsService::handles(topic)
                || ProvisioningService::handles(topic))
    }

    /// Runs the request on `topic`; the responses to publish.
    pub fn handle(&mut self, topic: &str, payload: &[u8], registry: &Registry) -> Vec<Outbound> {
        let now = SystemTime::now();
        if ShadowService::handles(topic) {
            self.shadow.handle(topic, payload, now)
        } else if JobsService::handles(topic) {
            self.jobs.handle(topic, payload, now)
        } else if ProvisioningService::handles(topic) {
            let mut backend = RegistryBackend { registry };
            self.provisioning.handle(topic, payload, now, &mut backend)
        } else {
            Vec::new()
        }
    }
}

/// Fleet provisioning's view of the registry and CA.
struct RegistryBackend<'a> {
    registry: &'a Registry,
}

impl ProvisioningBackend for RegistryBackend<'_> {
    fn create_keys_and_certificate(&mut self) -> Result<NewCertificate, String> {
        let issued = self
            .registry
            .ca()
            .issue("provisioned-device")
            .map_err(|e| e.to_string())?;
        self.registry
            .add_certificate(&issued.certificate_id, CertificateStatus::PendingActivation);
        Ok(NewCertificate {
            certificate_id: issued.certificate_id,
            certificate_pem: issued.certificate_pem,
            private_key_pem: issued.private_key_pem,
        })
    }

    fn create_certificate_from_csr(&mut self, csr_pem: &str) -> Result<NewCertificate, String> {
        let issued = self
            .registry
            .ca()
            .sign_csr(csr_pem)
            .map_err(|e| e.to_string())?;
        self.registry
            .add_certificate(&issued.certificate_id, CertificateStatus::PendingActivation);
        Ok(NewCertificate {
            certificate_id: issued.certificate_id,
            certificate_pem: issued.certificate_pem,
            private_key_pem: None,
        })
    }

    fn register_thing(
        &mut self,
        thing_name: &str,
        certificate_id: &str,
        attributes: &Map<String, Value>,
    ) -> Result<(), String> {
        self.registry
            .provision_thing(thing_name, certificate_id, attributes)
            .map_err(|e| e.to_string())
    }
}
