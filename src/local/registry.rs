//! The core's registry: things, their certificates and each certificate's status and role,
//! and the IAM credentials SigV4 connections are verified against. The TLS verifier asks it
//! whether a certificate may connect; fleet provisioning creates things and certificates in it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use crate::local::error::{LocalError, LocalResult};
use crate::local::pki::{CertificateAuthority, IssuedCertificate};
use crate::local::sigv4_verify::SigningSecret;
use crate::local::tls_server::{CertificateStatus, CertificateStatusLookup};

/// What a certificate is allowed to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateRole {
    /// A device: everything (the core applies no IoT policy beyond AWS's reserved topics).
    Device,
    /// A fleet-provisioning claim: only the provisioning topics of `template`.
    Claim {
        /// The provisioning template it may call.
        template: String,
    },
}

#[derive(Debug)]
struct CertificateRecord {
    status: CertificateStatus,
    role: CertificateRole,
    thing: Option<String>,
}

/// A registered thing.
#[derive(Debug, Clone, Default)]
pub struct Thing {
    /// Its attributes (`AttributePayload`).
    pub attributes: Map<String, Value>,
    /// The ids of the certificates attached to it.
    pub certificates: Vec<String>,
}

#[derive(Debug)]
struct Credential {
    secret_access_key: String,
    session_token: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    things: HashMap<String, Thing>,
    certificates: HashMap<String, CertificateRecord>,
    credentials: HashMap<String, Credential>,
}

/// Things, certificates and credentials. Shared by the listeners and the services.
#[derive(Debug)]
pub struct Registry {
    ca: CertificateAuthority,
    inner: Mutex<Inner>,
}

fn valid_thing_name(name: &str) -> LocalResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(LocalError::Config(format!(
            "thing name {name:?} is invalid: 1 to 128 characters from a-z A-Z 0-9 : _ -"
        )))
    }
}

impl Registry {
    /// A registry whose certificates are signed by `ca`.
    #[must_use]
    pub fn new(ca: CertificateAuthority) -> Self {
        Self {
            ca,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The certificate authority.
    #[must_use]
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates (or updates the attributes of) a thing and issues an ACTIVE device certificate
    /// attached to it.
    ///
    /// # Errors
    /// [`LocalError::Config`] for an invalid thing name; [`LocalError::Pki`] if issuing fails.
    pub fn register_thing(
        &self,
        name: &str,
        attributes: Map<String, Value>,
    ) -> LocalResult<IssuedCertificate> {
        valid_thing_name(name)?;
        let issued = self
            .ca
            .issue(name)
            .map_err(|e| LocalError::Pki(e.to_string()))?;
        self.attach(
            name,
            &attributes,
            &issued.certificate_id,
            CertificateStatus::Active,
            CertificateRole::Device,
        );
        Ok(issued)
    }

    fn attach(
        &self,
        thing: &str,
        attributes: &Map<String, Value>,
        certificate_id: &str,
        status: CertificateStatus,
        role: CertificateRole,
    ) {
        let mut inner = self.lock();
        let entry = inner.things.entry(thing.to_owned()).or_default();
        for (k, v) in attributes {
            entry.attributes.insert(k.clone(), v.clone());
        }
        if !entry.certificates.iter().any(|c| c == certificate_id) {
            entry.certificates.push(certificate_id.to_owned());
        }
        inner.certificates.insert(
            certificate_id.to_owned(),
            CertificateRecord {
                status,
                role,
                thing: Some(thing.to_owned()),
            },
        );
    }

    /// Issues an ACTIVE claim certificate that may only call fleet provisioning for `template`.
    ///
    /// # Errors
    /// [`LocalError::Pki`] if issuing fails.
    pub fn add_claim(&self, template: &str, claim_thing: &str) -> LocalResult<IssuedCertificate> {
        let issued = self
            .ca
            .issue(claim_thing)
            .map_err(|e| LocalError::Pki(e.to_string()))?;
        self.lock().certificates.insert(
            issued.certificate_id.clone(),
            CertificateRecord {
                status: CertificateStatus::Active,
                role: CertificateRole::Claim {
                    template: template.to_owned(),
                },
                thing: None,
            },
        );
        Ok(issued)
    }

    /// Records a certificate the core issued outside a thing (fleet provisioning's new ones).
    pub fn add_certificate(&self, certificate_id: &str, status: CertificateStatus) {
        self.lock().certificates.insert(
            certificate_id.to_owned(),
            CertificateRecord {
                status,
                role: CertificateRole::Device,
                thing: None,
            },
        );
    }

    /// Attaches a known certificate to a (new or existing) thing and activates it.
    ///
    /// # Errors
    /// [`LocalError::NotFound`] for an unknown certificate; [`LocalError::Config`] for a bad
    /// thing name.
    pub fn provision_thing(
        &self,
        thing: &str,
        certificate_id: &str,
        attributes: &Map<String, Value>,
    ) -> LocalResult<()> {
        valid_thing_name(thing)?;
        if !self.lock().certificates.contains_key(certificate_id) {
            return Err(LocalError::NotFound(format!(
                "no certificate with id {certificate_id}"
            )));
        }
        self.attach(
            thing,
            attributes,
            certificate_id,
            CertificateStatus::Active,
            CertificateRole::Device,
        );
        Ok(())
    }

    /// Changes a certificate's status.
    ///
    /// # Errors
    /// [`LocalError::NotFound`] for an unknown certificate id.
    pub fn set_status(&self, certificate_id: &str, status: CertificateStatus) -> LocalResult<()> {
        match self.lock().certificates.get_mut(certificate_id) {
            Some(r) => {
                r.status = status;
                Ok(())
            }
            None => Err(LocalError::NotFound(format!(
                "no certificate with id {certificate_id}"
            ))),
        }
    }

    /// The role of a certificate.
    #[must_use]
    pub fn role(&self, certificate_id: &str) -> Option<CertificateRole> {
        self.lock()
            .certificates
            .get(certificate_id)
            .map(|r| r.role.clone())
    }

    /// The thing a certificate is attached to.
    #[must_use]
    pub fn thing_of(&self, certificate_id: &str) -> Option<String> {
        self.lock()
            .certificates
            .get(certificate_id)
            .and_then(|r| r.thing.clone())
    }

    /// A registered thing.
    #[must_use]
    pub fn thing(&self, name: &str) -> Option<Thing> {
        self.lock().things.get(name).cloned()
    }

    /// Adds (or replaces) IAM credentials SigV4 connections may sign with.
    ///
    /// # Errors
    /// [`LocalError::Config`] for an empty access key id or secret.
    pub fn add_credentials(
        &self,
        access_key_id: &str,
        secret_access_key: &str,
        session_token: Option<&str>,
    ) -> LocalResult<()> {
        if access_key_id.is_empty() || secret_access_key.is_empty() {
            return Err(LocalError::Config(
                "access_key and secret_key must not be empty".into(),
            ));
        }
        self.lock().credentials.insert(
            access_key_id.to_owned(),
            Credential {
                secret_access_key: secret_access_key.to_owned(),
                session_token: session_token.map(str::to_owned),
            },
        );
        Ok(())
    }

    /// The secret for an access key id, for SigV4 verification.
    #[must_use]
    pub fn signing_secret(&self, access_key_id: &str) -> Option<SigningSecret> {
        self.lock()
            .credentials
            .get(access_key_id)
            .map(|c| SigningSecret {
                secret_access_key: c.secret_access_key.clone(),
                session_token: c.session_token.clone(),
            })
    }
}

impl CertificateStatusLookup for Registry {
    fn status(&self, certificate_id: &str) -> Option<CertificateStatus> {
        self.lock()
            .certificates
            .get(certificate_id)
            .map(|r| r.status)
    }
}
