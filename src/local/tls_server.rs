//! The TLS server side of the listeners: rustls `ServerConfig`, and client certificate
//! verification that also checks the certificate's registry status (only ACTIVE connects).
//!
//! ALPN: rustls completes a handshake with a client that offers no ALPN at all even when the
//! server has protocols configured (it refuses only a client offering none of them). The
//! listener that requires a protocol (`x-amzn-mqtt-ca`, `mqtt`) checks
//! `ServerConnection::alpn_protocol()` itself after the handshake.
//!
//! Session resumption is off: a resumed session would skip client certificate verification,
//! letting a certificate made INACTIVE or REVOKED after its first connection back in.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::core::net::tls::provider;
use crate::local::pki::{certificate_id, PkiError, ServerIdentity};

/// A certificate's status in the core's registry, as AWS IoT names them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CertificateStatus {
    /// May connect.
    Active,
    /// Registered but switched off (`UpdateCertificate ... INACTIVE`).
    Inactive,
    /// Revoked for good.
    Revoked,
    /// Created by fleet provisioning and not yet activated.
    PendingActivation,
}

impl CertificateStatus {
    /// AWS's name for the status (`ACTIVE`, `INACTIVE`, `REVOKED`, `PENDING_ACTIVATION`).
    #[must_use]
    pub fn as_aws_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Inactive => "INACTIVE",
            Self::Revoked => "REVOKED",
            Self::PendingActivation => "PENDING_ACTIVATION",
        }
    }
}

/// Status of every certificate the core knows, by certificate id; shared with the TLS verifier.
pub trait CertificateStatusLookup: Send + Sync + std::fmt::Debug {
    /// The status of the certificate with this id (lowercase hex SHA-256 of its DER), or
    /// `None` when the core does not know it.
    fn status(&self, certificate_id: &str) -> Option<CertificateStatus>;
}

/// The refusal of a certificate the registry does not allow to connect.
#[derive(Debug)]
struct NotActive(&'static str);

impl std::fmt::Display for NotActive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client certificate is {}", self.0)
    }
}

impl std::error::Error for NotActive {}

/// Client certificate verification: signed by the core's CA (webpki via rustls's
/// `WebPkiClientVerifier`, ring provider) AND its status is Active; otherwise the handshake
/// fails with a certificate alert (`certificate_revoked` for REVOKED, `certificate_unknown`
/// for INACTIVE, PENDING_ACTIVATION or an unregistered certificate).
#[derive(Debug)]
pub struct RegisteredCertificateVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    statuses: Arc<dyn CertificateStatusLookup>,
}

impl RegisteredCertificateVerifier {
    /// A verifier trusting `trust_anchors` (the core's CA certificate) and asking `statuses`
    /// whether each verified certificate may connect. A client certificate is required.
    ///
    /// # Errors
    /// [`PkiError::Tls`] when a trust anchor is unusable or none is given.
    pub fn new(
        trust_anchors: &[CertificateDer<'static>],
        statuses: Arc<dyn CertificateStatusLookup>,
    ) -> Result<Self, PkiError> {
        let mut roots = RootCertStore::empty();
        for anchor in trust_anchors {
            roots
                .add(anchor.clone())
                .map_err(|e| PkiError::Tls(format!("unusable CA certificate: {e}")))?;
        }
        let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| PkiError::Tls(format!("client certificate verifier: {e}")))?;
        Ok(Self { webpki, statuses })
    }
}

impl ClientCertVerifier for RegisteredCertificateVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = certificate_id(end_entity);
        let refused = match self.statuses.status(&id) {
            Some(CertificateStatus::Active) => return Ok(verified),
            Some(CertificateStatus::Revoked) => CertificateError::Revoked,
            Some(other) => {
                CertificateError::Other(OtherError(Arc::new(NotActive(other.as_aws_str()))))
            }
            None => CertificateError::Other(OtherError(Arc::new(NotActive("not registered")))),
        };
        log::debug!("client certificate {id} refused: {refused}");
        Err(rustls::Error::InvalidCertificate(refused))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The listeners' `ServerConfig`: TLS 1.2 and 1.3 only, the ring provider, the server
/// identity, ALPN protocols `alpn` offered (empty: none), client certificates required and
/// verified by `client_certs` when it is `Some` (none requested otherwise), no session
/// resumption.
///
/// # Errors
/// [`PkiError::Tls`] when the identity's key or certificate is unusable.
pub fn server_config(
    identity: &ServerIdentity,
    client_certs: Option<Arc<RegisteredCertificateVerifier>>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, PkiError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| PkiError::Tls(e.to_string()))?;
    let builder = match client_certs {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| PkiError::Tls(format!("unusable server certificate or key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// After a handshake: the certificate id of the client's end-entity certificate, if any.
#[must_use]
pub fn peer_certificate_id(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| certificate_id(cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::net::tls::{client_config, ClientIdentity, TlsOptions};
    use crate::core::secret::Secret;
    use crate::local::pki::{CertificateAuthority, IssuedCertificate};
    use rustls::pki_types::ServerName;
    use rustls::ClientConfig;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[derive(Debug, Default)]
    struct Registry(Mutex<HashMap<String, CertificateStatus>>);

    impl Registry {
        fn set(&self, id: &str, status: CertificateStatus) {
            self.0.lock().unwrap().insert(id.to_owned(), status);
        }
    }

    impl CertificateStatusLookup for Registry {
        fn status(&self, certificate_id: &str) -> Option<CertificateStatus> {
            self.0.lock().unwrap().get(certificate_id).copied()
        }
    }

    struct Core {
        ca: CertificateAuthority,
        registry: Arc<Registry>,
        identity: ServerIdentity,
    }

    impl Core {
        fn new() -> Self {
            let ca = CertificateAuthority::new("Local IoT Core CA").unwrap();
            let identity = ca.server_identity(&[]).unwrap();
            Self {
                ca,
                registry: Arc::new(Registry::default()),
                identity,
            }
        }

        fn device(&self, status: CertificateStatus) -> IssuedCertificate {
            let issued = self.ca.issue("thing").unwrap();
            self.registry.set(&issued.certificate_id, status);
            issued
        }

        fn mtls_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
            let registry: Arc<dyn CertificateStatusLookup> = self.registry.clone();
            let verifier = RegisteredCertificateVerifier::new(&[self.ca.ca_der()], registry);
            server_config(&self.identity, Some(Arc::new(verifier.unwrap())), alpn).unwrap()
        }

        fn client(&self, device: Option<&IssuedCertificate>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
            client_config(&TlsOptions {
                ca_pem: Some(self.ca.ca_pem().as_bytes().to_vec()),
                client_auth: device.map(|d| ClientIdentity {
                    cert_pem: d.certificate_pem.clone().into_bytes(),
                    key_pem: Secret::new(d.private_key_pem.clone().unwrap().into_bytes()),
                }),
                alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            })
            .unwrap()
        }
    }

    /// What the server saw: peer certificate id, ALPN and TLS version, or the handshake error.
    #[derive(Debug)]
    struct Accepted {
        peer_id: Option<String>,
        alpn: Option<Vec<u8>>,
        version: Option<rustls::ProtocolVersion>,
    }

    /// One loopback handshake. Returns the server's outcome and whether the client could read
    /// the server's first byte (in TLS 1.3 the client finishes before the server verifies).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<Accepted, std::io::Error>, bool) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await?;
            let (_, conn) = tls.get_ref();
            let accepted = Accepted {
                peer_id: peer_certificate_id(conn),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version: conn.protocol_version(),
            };
            tls.write_all(b"!").await?;
            tls.flush().await?;
            Ok(accepted)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client_ok = match tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
        {
            Ok(mut tls) => {
                let mut byte = [0u8; 1];
                tls.read_exact(&mut byte).await.is_ok() && byte == *b"!"
            }
            Err(_) => false,
        };
        (server_task.await.unwrap(), client_ok)
    }

    fn certificate_error(err: &std::io::Error) -> Option<CertificateError> {
        match err.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(e) => Some(e.clone()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn active_certificate_connects_and_is_identified() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Active);
        let (server, client_ok) =
            handshake(core.mtls_config(&[]), core.client(Some(&device), &[])).await;
        let accepted = server.unwrap();
        assert!(client_ok);
        assert_eq!(
            accepted.peer_id.as_deref(),
            Some(device.certificate_id.as_str())
        );
        assert_eq!(accepted.peer_id, Some(certificate_id(&device.der)));
        assert_eq!(accepted.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(accepted.alpn, None);
    }

    #[tokio::test]
    async fn certificates_not_active_fail_the_handshake() {
        let core = Core::new();
        for (status, expected) in [
            (CertificateStatus::Inactive, "INACTIVE"),
            (CertificateStatus::PendingActivation, "PENDING_ACTIVATION"),
        ] {
            let device = core.device(status);
            let (server, client_ok) =
                handshake(core.mtls_config(&[]), core.client(Some(&device), &[])).await;
            let err = server.unwrap_err();
            assert!(!client_ok);
            match certificate_error(&err) {
                Some(CertificateError::Other(other)) => {
                    assert!(other.to_string().contains(expected), "{other}");
                }
                e => panic!("{status:?}: unexpected {e:?} ({err})"),
            }
        }
    }

    #[tokio::test]
    async fn revoked_certificate_fails_the_handshake() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Revoked);
        let (server, client_ok) =
            handshake(core.mtls_config(&[]), core.client(Some(&device), &[])).await;
        let err = server.unwrap_err();
        assert!(!client_ok);
        assert_eq!(certificate_error(&err), Some(CertificateError::Revoked));
    }

    #[tokio::test]
    async fn unregistered_certificate_fails_the_handshake() {
        let core = Core::new();
        let device = core.ca.issue("never-registered").unwrap();
        let (server, client_ok) =
            handshake(core.mtls_config(&[]), core.client(Some(&device), &[])).await;
        let err = server.unwrap_err();
        assert!(!client_ok);
        assert!(
            matches!(certificate_error(&err), Some(CertificateError::Other(ref o)) if o.to_string().contains("not registered")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn certificate_from_another_ca_fails_even_if_registered_active() {
        let core = Core::new();
        let other_ca = CertificateAuthority::new("Other CA").unwrap();
        let foreign = other_ca.issue("thing").unwrap();
        core.registry
            .set(&foreign.certificate_id, CertificateStatus::Active);
        let (server, client_ok) =
            handshake(core.mtls_config(&[]), core.client(Some(&foreign), &[])).await;
        let err = server.unwrap_err();
        assert!(!client_ok);
        assert_eq!(
            certificate_error(&err),
            Some(CertificateError::UnknownIssuer)
        );
    }

    #[tokio::test]
    async fn missing_client_certificate_fails_when_required() {
        let core = Core::new();
        let (server, client_ok) = handshake(core.mtls_config(&[]), core.client(None, &[])).await;
        let err = server.unwrap_err();
        assert!(!client_ok);
        assert!(
            matches!(
                err.get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>()),
                Some(rustls::Error::NoCertificatesPresented)
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn no_client_auth_config_accepts_anonymous_clients() {
        let core = Core::new();
        let config = server_config(&core.identity, None, &[b"mqtt"]).unwrap();
        let (server, client_ok) = handshake(config, core.client(None, &[b"mqtt"])).await;
        let accepted = server.unwrap();
        assert!(client_ok);
        assert_eq!(accepted.peer_id, None);
        assert_eq!(accepted.alpn.as_deref(), Some(&b"mqtt"[..]));
    }

    #[tokio::test]
    async fn alpn_is_negotiated_when_offered() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Active);
        let server = core.mtls_config(&[b"x-amzn-mqtt-ca"]);
        let client = core.client(Some(&device), &[b"x-amzn-mqtt-ca"]);
        let accepted = handshake(server.clone(), client).await.0.unwrap();
        assert_eq!(accepted.alpn.as_deref(), Some(&b"x-amzn-mqtt-ca"[..]));
        // A client offering no ALPN still completes the handshake (the listener checks).
        let accepted = handshake(server.clone(), core.client(Some(&device), &[]))
            .await
            .0
            .unwrap();
        assert_eq!(accepted.alpn, None);
        // A client offering only other protocols is refused by rustls.
        let (result, _) = handshake(server, core.client(Some(&device), &[b"mqtt"])).await;
        assert!(result.is_err());
    }

    fn single_version_client(
        core: &Core,
        device: &IssuedCertificate,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(core.ca.ca_der()).unwrap();
        let key = crate::core::net::tls::parse_private_key(
            device.private_key_pem.as_deref().unwrap().as_bytes(),
        )
        .unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![CertificateDer::from(device.der.clone())], key)
            .unwrap();
        Arc::new(config)
    }

    #[tokio::test]
    async fn tls12_only_and_tls13_only_clients_connect() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Active);
        for (version, expected) in [
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        ] {
            let client = single_version_client(&core, &device, version);
            let (server, client_ok) = handshake(core.mtls_config(&[]), client).await;
            let accepted = server.unwrap();
            assert!(client_ok);
            assert_eq!(accepted.version, Some(expected));
            assert_eq!(accepted.peer_id, Some(device.certificate_id.clone()));
        }
    }

    #[tokio::test]
    async fn tls12_client_with_revoked_certificate_is_refused() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Revoked);
        let client = single_version_client(&core, &device, &rustls::version::TLS12);
        let (server, client_ok) = handshake(core.mtls_config(&[]), client).await;
        assert_eq!(
            certificate_error(&server.unwrap_err()),
            Some(CertificateError::Revoked)
        );
        assert!(!client_ok);
    }

    #[tokio::test]
    async fn a_status_change_applies_to_the_next_handshake_of_the_same_client() {
        let core = Core::new();
        let device = core.device(CertificateStatus::Active);
        let server = core.mtls_config(&[]);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            core.registry
                .set(&device.certificate_id, CertificateStatus::Active);
            // The same ClientConfig (and so its session cache) for both connections.
            let client = single_version_client(&core, &device, version);
            assert!(handshake(server.clone(), client.clone()).await.0.is_ok());
            core.registry
                .set(&device.certificate_id, CertificateStatus::Inactive);
            let (result, client_ok) = handshake(server.clone(), client).await;
            assert!(result.is_err(), "resumption must not skip the status check");
            assert!(!client_ok);
        }
    }

    #[test]
    fn server_config_offers_the_given_alpn_and_no_resumption() {
        let core = Core::new();
        let config = core.mtls_config(&[b"x-amzn-mqtt-ca", b"mqtt"]);
        assert_eq!(
            config.alpn_protocols,
            vec![b"x-amzn-mqtt-ca".to_vec(), b"mqtt".to_vec()]
        );
        assert_eq!(config.send_tls13_tickets, 0);
        assert!(!config.session_storage.can_cache());
    }
}
