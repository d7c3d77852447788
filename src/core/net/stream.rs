//! The byte stream to a broker, the hook for bringing one's own ([`Connector`]), and the
//! classification of I/O errors (naming the TLS problem when rustls reported one).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::core::error::Error;

/// A byte stream to the broker.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed byte stream to the broker.
pub type Stream = Box<dyn Io>;

/// What a [`crate::core::config::Connector`] returns.
pub type ConnectFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Stream>> + Send>>;

/// Opens byte streams to the broker for [`crate::core::net::transport::Transport::Custom`] (tunnels, in-memory test
/// brokers). Called once per connection attempt.
pub trait Connector: Send + Sync {
    /// Opens one stream.
    fn connect(&self) -> ConnectFuture;
}

/// Describes an I/O error, naming the TLS problem when rustls reported one.
pub fn classify_io(endpoint: &str, port: u16, e: &std::io::Error, during: &str) -> Error {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return Error::Tls {
            endpoint: format!("{endpoint}:{port}"),
            message: describe_tls(tls),
        };
    }
    Error::Connect(format!("{during} {endpoint}:{port} failed: {e}"))
}

fn describe_tls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(C::UnknownIssuer) => {
            "the server certificate is not signed by a trusted CA (UnknownIssuer)".into()
        }
        E::InvalidCertificate(C::BadSignature) => {
            "the server certificate's signature does not verify against the trusted CA of that name (BadSignature: an impostor CA?)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the server certificate is not valid for this host name (NotValidForName)".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the server certificate has expired (Expired)".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server certificate is not valid yet (NotValidYet)".into()
        }
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate (alert CertificateRequired)".into()
        }
        E::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::DecryptError,
        ) => format!("the server rejected our client certificate (alert {e:?})"),
        E::AlertReceived(A::HandshakeFailure) => {
            "the server ended the handshake (alert HandshakeFailure: no client certificate, or no common cipher/protocol)".into()
        }
        E::AlertReceived(A::NoApplicationProtocol) => {
            "the server accepts none of the offered ALPN protocols (alert NoApplicationProtocol)".into()
        }
        other => other.to_string(),
    }
}
