//! rustls client configuration: trust anchors, client certificate, ALPN.
//!
//! Exactly one crypto provider is used, chosen explicitly (ring): nothing depends on a
//! process-default provider. Server certificates are always verified; there is no way to turn
//! that off. TLS 1.2 and 1.3 only.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::core::error::{Error, Result};
use crate::core::secret::Secret;

/// What a TLS connection needs besides the host name.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM trust anchors; `None` means Amazon Root CA 1 and 3 plus the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate (chain) and private key, both PEM, for mutual TLS.
    pub client_auth: Option<ClientIdentity>,
    /// ALPN protocols offered in the ClientHello (empty: none).
    pub alpn: Vec<Vec<u8>>,
}

/// A client certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The certificate chain, PEM; the device certificate first.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM (PKCS#1, PKCS#8 or SEC1).
    pub key_pem: Secret<Vec<u8>>,
}

/// The crypto provider every connection uses.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses every certificate in a PEM buffer; fails if one is malformed or there are none.
///
/// # Errors
/// [`Error::Config`] naming `what` (for example "CA file") and the problem.
pub fn parse_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        match item {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                return Err(Error::Config(format!(
                    "{what} is not valid PEM: {}",
                    describe_pem_error(&e)
                )))
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{what} contains no PEM certificate ('-----BEGIN CERTIFICATE-----')"
        )));
    }
    Ok(certs)
}

fn describe_pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a section has no END line".into(),
        E::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        E::Base64Decode(_) => "the base64 body cannot be decoded".into(),
        E::NoItemsFound => "nothing found".into(),
        E::SectionTooLarge => "a section is too large".into(),
        _ => "unreadable".into(),
    }
}

/// Parses a private key (PKCS#1, PKCS#8 or SEC1 PEM). Never puts key material in the error.
///
/// # Errors
/// [`Error::Config`] when the key is missing, encrypted or unreadable.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(Error::Config(
            "the private key is encrypted; give key_password (or use an unencrypted PKCS#1, PKCS#8 or SEC1 PEM key)"
                .into(),
        ));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        Error::Config(format!(
            "the private key is not a PEM private key (PKCS#1 'RSA PRIVATE KEY', PKCS#8 'PRIVATE KEY' or SEC1 'EC PRIVATE KEY'): {}",
            describe_pem_error(&e)
        ))
    })
}

/// Checks a client identity: both parse and the key belongs to the certificate.
///
/// # Errors
/// [`Error::Config`] for unreadable PEM or a key that does not match the certificate.
pub fn check_identity(identity: &ClientIdentity) -> Result<CertifiedKey> {
    let chain = parse_certificates(&identity.cert_pem, "the client certificate")?;
    let key = parse_private_key(identity.key_pem.expose())?;
    let provider = provider();
    let loaded = provider.key_provider.load_private_key(key).map_err(|_| {
        Error::Config(
            "the private key cannot be used (unsupported algorithm or corrupt key)".into(),
        )
    })?;
    let certified = CertifiedKey::new(chain, loaded);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(Error::Config(
                "the private key does not match the client certificate (their public keys differ)"
                    .into(),
            ))
        }
        Err(e) => Err(Error::Config(format!(
            "the client certificate cannot be parsed: {e}"
        ))),
    }
}

/// Presents the one device certificate to every server that asks.
#[derive(Debug)]
struct DeviceCertificate(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for DeviceCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn default_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    // Amazon Root CA 1 (RSA) and 3 (ECC) sign the AWS IoT ATS endpoints.
    roots.extend(
        webpki_roots::TLS_SERVER_ROOTS
            .iter()
            .filter(|anchor| {
                let subject: &[u8] = anchor.subject.as_ref();
                contains(subject, b"Amazon Root CA 1") || contains(subject, b"Amazon Root CA 3")
            })
            .cloned(),
    );
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        log::debug!(
            "{} error(s) while loading system root certificates (ignored)",
            native.errors.len()
        );
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!(
        "trust store: Amazon Root CA 1 and 3, {added} system roots ({ignored} unparsable ignored)"
    );
    roots
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Builds the rustls configuration for one client.
///
/// # Errors
/// [`Error::Config`] for unreadable or inconsistent certificates and keys.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>> {
    let roots = match &opts.ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certificates(pem, "the CA file")? {
                roots.add(cert).map_err(|e| {
                    Error::Config(format!("the CA file holds an unusable certificate: {e}"))
                })?;
            }
            roots
        }
        None => default_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let mut config = match &opts.client_auth {
        Some(identity) => {
            let certified = check_identity(identity)?;
            builder.with_client_cert_resolver(Arc::new(DeviceCertificate(Arc::new(certified))))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols.clone_from(&opts.alpn);
    Ok(Arc::new(config))
}
