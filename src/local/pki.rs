//! The embedded core's certificate authority: its own CA, the listeners' server certificate,
//! device certificates (`CreateKeysAndCertificate`) and CSR signing (`CreateCertificateFromCsr`).
//!
//! Differences from AWS IoT Core, on purpose or by necessity:
//! - Keys generated here are ECDSA P-256 (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`). AWS's
//!   `CreateKeysAndCertificate` hands out RSA-2048 keys (PKCS#1, `RSA PRIVATE KEY`), but `ring`
//!   cannot generate RSA keys. Every MQTT client takes either.
//! - Device certificates expire with the CA (one year); AWS's expire at the end of 2049.
//! - CSR public keys: RSA 2048–8192 bits, ECDSA P-256 or P-384. AWS also takes P-521, which
//!   `ring` (and so the TLS listeners) cannot verify. The CSR's subject is kept; its requested
//!   extensions are not (the certificate is always a clientAuth end-entity certificate), and a
//!   CSR requesting an extension other than subjectAltName, keyUsage, extKeyUsage or
//!   basicConstraints is refused (rcgen's CSR parser does not read others).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

/// The largest CSR (PEM text) accepted; real ones are a few KiB at most.
const MAX_CSR_PEM_LEN: usize = 64 * 1024;
/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How far back every certificate's validity starts (tolerates clock skew).
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);
/// The RSA modulus sizes `ring` verifies, so the only ones a client could connect with.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

/// Why a certificate could not be made. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation or certificate signing failed inside rcgen/ring.
    #[error("certificate generation failed: {0}")]
    Generation(String),
    /// A name given for the server certificate cannot go in a subjectAltName.
    #[error("'{0}' is not a valid DNS name or IP address for the server certificate")]
    InvalidServerName(String),
    /// The CSR text is not a PEM `CERTIFICATE REQUEST`.
    #[error("CSR is not valid PEM (expected one '-----BEGIN CERTIFICATE REQUEST-----' block)")]
    CsrNotPem,
    /// The CSR is larger than any real one.
    #[error("CSR is too large ({0} bytes, at most {MAX_CSR_PEM_LEN})")]
    CsrTooLarge(usize),
    /// The CSR's DER is not a PKCS#10 certification request.
    #[error("CSR is not a valid PKCS#10 certification request")]
    CsrMalformed,
    /// The CSR's self-signature does not verify with its own public key.
    #[error("CSR signature does not verify")]
    CsrSignature,
    /// The CSR requests an extension rcgen cannot read.
    #[error("CSR requests an unsupported extension (only subjectAltName, keyUsage, extKeyUsage and basicConstraints are read)")]
    CsrUnsupportedExtension,
    /// The CSR's signature algorithm is not one this CA can check.
    #[error("CSR is signed with an unsupported signature algorithm")]
    CsrUnsupportedSignatureAlgorithm,
    /// The CSR's public key is of a kind or size the listeners cannot use.
    #[error("CSR public key is not supported: {0}")]
    CsrUnsupportedKey(String),
    /// The TLS server configuration could not be built.
    #[error("TLS server setup failed: {0}")]
    Tls(String),
}

fn generation(e: &rcgen::Error) -> PkiError {
    PkiError::Generation(e.to_string())
}

/// The server certificate chain and key the TLS listeners present.
pub struct ServerIdentity {
    /// The server's certificate chain, end-entity first (just the end-entity certificate: the
    /// CA is the client's trust anchor).
    pub chain: Vec<CertificateDer<'static>>,
    /// The server certificate's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A device certificate this CA issued, as fleet provisioning returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// AWS's certificate id: lowercase hex SHA-256 of [`IssuedCertificate::der`].
    pub certificate_id: String,
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The new private key (PKCS#8 PEM) when the CA generated it; `None` for a signed CSR.
    pub private_key_pem: Option<String>,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("certificate_id", &self.certificate_id)
            .field(
                "private_key_pem",
                &self.private_key_pem.as_ref().map(|_| "[redacted]"),
            )
            .finish_non_exhaustive()
    }
}

/// AWS's certificate id: the lowercase hex SHA-256 of the certificate's DER (what
/// `openssl x509 -outform der | sha256sum` prints).
#[must_use]
pub fn certificate_id(der: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The core's certificate authority: a self-signed ECDSA P-256 CA that signs the listeners'
/// server certificate and every device certificate.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    expires: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("certificate_id", &certificate_id(&self.ca_der))
            .field("key", &"[redacted]")
            .finish()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA (ECDSA P-256, CA:true, key usage keyCertSign/cRLSign), valid from
    /// now-1 day to now+1 year.
    ///
    /// # Errors
    /// [`PkiError::Generation`] when key generation or signing fails.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generation(&e))?;
        let now = SystemTime::now();
        let expires = now + CA_LIFETIME;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_only(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        set_validity(&mut params, now, expires);
        let cert = params.self_signed(&key).map_err(|e| generation(&e))?;
        Ok(Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            expires,
        })
    }

    /// The CA certificate, PEM (what clients trust).
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// The server certificate + key for the listeners: SANs DNS `localhost` + the given names
    /// (an IP address string becomes an IP SAN), IP 127.0.0.1 and ::1; serverAuth EKU.
    ///
    /// # Errors
    /// [`PkiError::InvalidServerName`] for a name that is neither a DNS name nor an IP address,
    /// [`PkiError::Generation`] when key generation or signing fails.
    pub fn server_identity(&self, extra_names: &[String]) -> Result<ServerIdentity, PkiError> {
        let mut sans = vec![
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .map_err(|_| PkiError::InvalidServerName("localhost".into()))?,
            ),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ];
        for name in extra_names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|_| PkiError::InvalidServerName(name.clone()))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generation(&e))?;
        let mut params = self.end_entity_params(common_name_only("localhost"));
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| generation(&e))?;
        Ok(ServerIdentity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    /// A device certificate with a fresh ECDSA P-256 key (AWS's `CreateKeysAndCertificate`
    /// gives RSA-2048; `ring` cannot generate RSA keys); clientAuth EKU; CN = `common_name`.
    ///
    /// # Errors
    /// [`PkiError::Generation`] when key generation or signing fails.
    pub fn issue(&self, common_name: &str) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| generation(&e))?;
        let mut issued = self.sign_device(common_name_only(common_name), &key)?;
        issued.private_key_pem = Some(key.serialize_pem());
        Ok(issued)
    }

    /// Signs a PEM CSR into a device certificate (clientAuth EKU, the CSR's subject, its
    /// requested extensions dropped); `private_key_pem` is `None`. The CSR's self-signature
    /// must verify and its key be RSA 2048–8192 bits or ECDSA P-256/P-384.
    ///
    /// # Errors
    /// A `PkiError::Csr*` naming what is wrong with the CSR, or [`PkiError::Generation`].
    pub fn sign_csr(&self, csr_pem: &str) -> Result<IssuedCertificate, PkiError> {
        if csr_pem.len() > MAX_CSR_PEM_LEN {
            return Err(PkiError::CsrTooLarge(csr_pem.len()));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|_| PkiError::CsrNotPem)?;
        // The key is checked first (ring cannot verify a signature by a too-small RSA key, which
        // would otherwise be reported as a bad signature) and taken from the CSR's
        // SubjectPublicKeyInfo itself, not from rcgen's signature-algorithm guess (an ECDSA
        // P-256 key signed with SHA-384 would otherwise be written as a P-384 key).
        let spki = csr_subject_public_key_info(&der).ok_or(PkiError::CsrMalformed)?;
        check_public_key(spki)?;
        // rcgen (x509-parser with ring) checks the self-signature here.
        let parsed = CertificateSigningRequestParams::from_der(&der).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => PkiError::CsrSignature,
            rcgen::Error::UnsupportedExtension => PkiError::CsrUnsupportedExtension,
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                PkiError::CsrUnsupportedSignatureAlgorithm
            }
            _ => PkiError::CsrMalformed,
        })?;
        let public_key = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|_| PkiError::CsrUnsupportedKey("unreadable SubjectPublicKeyInfo".into()))?;
        self.sign_device(parsed.params.distinguished_name, &public_key)
    }

    fn sign_device(
        &self,
        subject: DistinguishedName,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = self.end_entity_params(subject);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| generation(&e))?;
        let der = cert.der().to_vec();
        Ok(IssuedCertificate {
            certificate_id: certificate_id(&der),
            certificate_pem: cert.pem(),
            private_key_pem: None,
            der,
        })
    }

    /// Parameters shared by every end-entity certificate: random serial, not a CA,
    /// digitalSignature, authority key identifier, valid from now-1 day until the CA expires.
    fn end_entity_params(&self, subject: DistinguishedName) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params, SystemTime::now(), self.expires);
        params
    }
}

fn common_name_only(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// A random positive 16-byte serial number (RFC 5280: unique per issuer, at most 20 bytes).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    if let Some(first) = bytes.first_mut() {
        *first = (*first & 0x7f) | 0x01;
    }
    SerialNumber::from_slice(&bytes)
}

/// Sets `not_before` to `from` minus [`BACKDATE`] and `not_after` to `until`.
fn set_validity(params: &mut CertificateParams, from: SystemTime, until: SystemTime) {
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch(from).saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch(until);
}

/// One DER TLV: its tag, its contents, and the whole encoding (header included).
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

/// Reads one DER TLV (single-byte tags, definite lengths up to 4 length bytes) from the
/// front of `input`; returns it and what follows.
fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let header = input.len() - rest.len();
    let (content, after) = rest.split_at_checked(len)?;
    let whole = input.get(..header.checked_add(len)?)?;
    Some((
        Tlv {
            tag,
            content,
            whole,
        },
        after,
    ))
}

/// Reads a TLV that must carry `tag`.
fn expect_tlv(input: &[u8], tag: u8) -> Option<(Tlv<'_>, &[u8])> {
    read_tlv(input).filter(|(tlv, _)| tlv.tag == tag)
}

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
/// 1.2.840.113549.1.1.1
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 (P-256)
const OID_PRIME256V1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// 1.3.132.0.34 (P-384)
const OID_SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// The DER SubjectPublicKeyInfo inside a PKCS#10 request:
/// `SEQUENCE { SEQUENCE { version, subject, subjectPKInfo, attributes }, sigAlg, sig }`.
fn csr_subject_public_key_info(csr_der: &[u8]) -> Option<&[u8]> {
    let (request, _) = expect_tlv(csr_der, TAG_SEQUENCE)?;
    let (info, _) = expect_tlv(request.content, TAG_SEQUENCE)?;
    let (_version, rest) = expect_tlv(info.content, TAG_INTEGER)?;
    let (_subject, rest) = expect_tlv(rest, TAG_SEQUENCE)?;
    let (spki, _) = expect_tlv(rest, TAG_SEQUENCE)?;
    Some(spki.whole)
}

/// Accepts RSA keys of 2048–8192 bits and ECDSA P-256/P-384 keys: what AWS accepts and `ring`
/// verifies at the handshake.
fn check_public_key(spki_der: &[u8]) -> Result<(), PkiError> {
    let unreadable = || PkiError::CsrUnsupportedKey("unreadable SubjectPublicKeyInfo".into());
    let (spki, _) = expect_tlv(spki_der, TAG_SEQUENCE).ok_or_else(unreadable)?;
    let (algorithm, rest) = expect_tlv(spki.content, TAG_SEQUENCE).ok_or_else(unreadable)?;
    let (key_bits, _) = expect_tlv(rest, TAG_BIT_STRING).ok_or_else(unreadable)?;
    let (oid, params) = expect_tlv(algorithm.content, TAG_OID).ok_or_else(unreadable)?;
    if oid.content == OID_RSA_ENCRYPTION {
        let bits = rsa_modulus_bits(key_bits.content).ok_or_else(unreadable)?;
        if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            Ok(())
        } else {
            Err(PkiError::CsrUnsupportedKey(format!(
                "RSA key of {bits} bits (need {RSA_MIN_BITS} to {RSA_MAX_BITS})"
            )))
        }
    } else if oid.content == OID_EC_PUBLIC_KEY {
        let (curve, _) = expect_tlv(params, TAG_OID).ok_or_else(unreadable)?;
        if curve.content == OID_PRIME256V1 || curve.content == OID_SECP384R1 {
            Ok(())
        } else {
            Err(PkiError::CsrUnsupportedKey(
                "ECDSA curve other than P-256 or P-384".into(),
            ))
        }
    } else {
        Err(PkiError::CsrUnsupportedKey(
            "neither RSA nor ECDSA (P-256, P-384)".into(),
        ))
    }
}

/// The size in bits of the modulus of an RSAPublicKey held in a BIT STRING's contents.
fn rsa_modulus_bits(bit_string: &[u8]) -> Option<usize> {
    let (&unused_bits, key) = bit_string.split_first()?;
    if unused_bits != 0 {
        return None;
    }
    let (public_key, _) = expect_tlv(key, TAG_SEQUENCE)?;
    let (modulus, _) = expect_tlv(public_key.content, TAG_INTEGER)?;
    let start = modulus.content.iter().position(|b| *b != 0)?;
    let significant = modulus.content.get(start..)?;
    let leading = significant.first()?.leading_zeros() as usize;
    Some(significant.len() * 8 - leading)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::UnixTime;
    use std::sync::Arc;

    // Made once with python `cryptography` (RSA-2048 / EC P-256, SHA-256).
    const RSA_2048_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIICWjCCAUICAQAwFTETMBEGA1UEAwwKcnNhLWRldmljZTCCASIwDQYJKoZIhvcN
AQEBBQADggEPADCCAQoCggEBAJ0yVSmHcNKeOz2opt8jnldx3Xkh0v9CTv/SlX76
KDydy+g+5yBHPxyB2OvxRRYe+XM1hnVHLWgKwq9hf2/m+IV4BkLXOWbcby9ebLl1
aa/acP3fLTXifkP5Bf+tCCnJ/Q1t3eambVsZiv+AKtMLBdyTDFCxcEBySRrofQtL
FZGwljqNKVWVZbjrXRlf5VntZo3HS8BlPW+6vjv0ClSIDs1CK4rb6FtVIdSX2a2w
Rr3RHPyi2UiePcNjiXhLmDYyW/X1CA7qggp6aw6SZwbagdONUhfLSGYM2OIWjkpf
2KgVJ7fw8ZhQk9y3wOMrhD8piJZk7hn9fQxHxypPAvYHHmsCAwEAAaAAMA0GCSqG
SIb3DQEBCwUAA4IBAQB7qy5fKByIhtQqrC5wZewX5djQRblOtCpkYTqeybNCkDDl
5Al7CUHbjHg6e+gF8oAo3J8axIJpWIxWPBl0/BKCoYvCD6rW4VVA1Fc0w1p5wdjA
QiSm8sdTLMtiEGIIjUfe71FTEtKQxUVg2OhBUdJuUIMZqqdknVUJ1l+8kSp/bOWO
zx6sfZwlgpr34i5gRPexaSfF6pjOcmgF0nQeJyzhZta7ImIxAg/AR2rgXzYn5svT
WitTvqvA7qxOUifJR8P+BeYQroYyytGCnJ81I85OmeU/aP83xb8+YB92gP5yuuKm
HHmvj3mdKANEWN31RdERZZc/PTe9MsxphhePVkax
-----END CERTIFICATE REQUEST-----
";
    const EC_P256_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIHPMHYCAQAwFDESMBAGA1UEAwwJZWMtZGV2aWNlMFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAE/X1fTh4lvZ0pDJ1WZV3hYW42/+i4jD6tvuNxDIvE9UjlBb4GM1nd
2wysrCg5BxkZuLT7JGGNsy13PO/Pk+GyKKAAMAoGCCqGSM49BAMCA0kAMEYCIQDD
wDjLxO9ZpfxhjUt9tYxXCClvBZ7Nyrju8r3gyEGctwIhAPGF4mKu1sfoiIrH++cQ
meLTx3AvnUZgwzqImllkPZxQ
-----END CERTIFICATE REQUEST-----
";
    // An EC P-256 key whose CSR is signed with ECDSA-SHA384.
    const EC_P256_SHA384_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIHOMHYCAQAwFDESMBAGA1UEAwwJZWMtc2hhMzg0MFkwEwYHKoZIzj0CAQYIKoZI
zj0DAQcDQgAE3VYeot38ZAZL1doGpbzNNwKQsvLstGMtYibVkx+sy3zRhCfUrFNO
ZeV+j7m0Ll1rfjdhPyYj9gdnKNaqtldhoKAAMAoGCCqGSM49BAMDA0gAMEUCIA4N
u/cMaDB72QFwbiLUs/oRmvjyy/EgUMqo8ryev1yfAiEAs9xEQiSyZmvOb8X0q/+W
BohF+qPv/+5jtwCMlV/RmoU=
-----END CERTIFICATE REQUEST-----
";
    const RSA_1024_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----
MIIBUzCBvQIBADAUMRIwEAYDVQQDDAlyc2Etc21hbGwwgZ8wDQYJKoZIhvcNAQEB
BQADgY0AMIGJAoGBAMdYrfC3d6FJScWrFc9UP7XYWi5Aq/MvDaeq1srJpVh6GRZP
yOjNLkj7nEWx9eCchScYhFyAoDzWIUfIXjuUdspCJuObDmAzcVPufSdhAWhD85Q/
GpQwRMjlozZ9GkinVlqDFh5GRNx/1O65XDWNMlALHvKjtaOB97AnWUHr2t95AgMB
AAGgADANBgkqhkiG9w0BAQsFAAOBgQAjopcvu9U/Oectj5FbK8NhKV7o7pXweGWz
T2fxfVnLMMDp+viZguKJUhZ3YyPTY8jbkr8ptiGRAVN6VJjjBqti41EI7TutrUpI
+6z8CzGzzw9/bLlEw5Nlb9jR7/387Z9DhFIzOJCdwGk5ci4SjU574BzRhJUxbrpN
klMOvTgqyw==
-----END CERTIFICATE REQUEST-----
";

    fn verifier(ca: &CertificateAuthority) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.ca_der()).unwrap();
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            crate::core::net::tls::provider(),
        )
        .build()
        .unwrap()
    }

    fn verifies(ca: &CertificateAuthority, der: &[u8]) -> bool {
        verifier(ca)
            .verify_client_cert(&CertificateDer::from(der.to_vec()), &[], UnixTime::now())
            .is_ok()
    }

    /// `tbsCertificate`'s fields: version, serial, signature, issuer, validity, subject, spki.
    fn certificate_spki(cert_der: &[u8]) -> Vec<u8> {
        let (cert, _) = expect_tlv(cert_der, TAG_SEQUENCE).unwrap();
        let (tbs, _) = expect_tlv(cert.content, TAG_SEQUENCE).unwrap();
        let (_version, rest) = read_tlv(tbs.content).unwrap();
        let (_serial, rest) = expect_tlv(rest, TAG_INTEGER).unwrap();
        let (_sig, rest) = expect_tlv(rest, TAG_SEQUENCE).unwrap();
        let (_issuer, rest) = expect_tlv(rest, TAG_SEQUENCE).unwrap();
        let (_validity, rest) = expect_tlv(rest, TAG_SEQUENCE).unwrap();
        let (_subject, rest) = expect_tlv(rest, TAG_SEQUENCE).unwrap();
        let (spki, _) = expect_tlv(rest, TAG_SEQUENCE).unwrap();
        spki.whole.to_vec()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn certificate_id_is_lowercase_hex_sha256_of_the_der() {
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            certificate_id(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn certificate_id_matches_openssl_der_sha256_semantics() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let issued = ca.issue("thing-1").unwrap();
        // Independently: PEM → DER → SHA-256 → lowercase hex.
        let der = CertificateDer::from_pem_slice(issued.certificate_pem.as_bytes()).unwrap();
        assert_eq!(der.as_ref(), issued.der.as_slice());
        let digest = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(issued.certificate_id, hex);
        assert_eq!(issued.certificate_id.len(), 64);
    }

    #[test]
    fn the_ca_is_a_self_signed_trust_anchor() {
        let ca = CertificateAuthority::new("Local IoT CA").unwrap();
        let from_pem = CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).unwrap();
        assert_eq!(from_pem, ca.ca_der());
        let mut roots = RootCertStore::empty();
        roots.add(ca.ca_der()).unwrap();
        assert!(contains(ca.ca_der().as_ref(), b"Local IoT CA"));
    }

    #[test]
    fn issued_certificates_verify_with_the_ca_and_carry_a_pkcs8_key() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let issued = ca.issue("thing-1").unwrap();
        assert!(verifies(&ca, &issued.der));
        assert!(contains(&issued.der, b"thing-1"));
        let key = issued.private_key_pem.as_deref().unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"));
        // The key belongs to the certificate.
        let identity = crate::core::net::tls::ClientIdentity {
            cert_pem: issued.certificate_pem.clone().into_bytes(),
            key_pem: crate::core::secret::Secret::new(key.as_bytes().to_vec()),
        };
        crate::core::net::tls::check_identity(&identity).unwrap();
    }

    #[test]
    fn issued_certificates_are_distinct() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let a = ca.sign_csr(EC_P256_CSR).unwrap();
        let b = ca.sign_csr(EC_P256_CSR).unwrap();
        assert_ne!(a.certificate_id, b.certificate_id);
    }

    #[test]
    fn another_cas_certificates_do_not_verify() {
        let ours = CertificateAuthority::new("Ours").unwrap();
        let theirs = CertificateAuthority::new("Theirs").unwrap();
        let issued = theirs.issue("thing-1").unwrap();
        assert!(!verifies(&ours, &issued.der));
    }

    #[test]
    fn debug_output_redacts_private_keys() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let issued = ca.issue("thing-1").unwrap();
        let debug = format!("{issued:?}");
        assert!(debug.contains("[redacted]"));
        assert!(!debug.contains("PRIVATE KEY"));
        let identity = ca.server_identity(&[]).unwrap();
        assert!(format!("{identity:?}").contains("[redacted]"));
        assert!(format!("{ca:?}").contains("[redacted]"));
    }

    #[test]
    fn rsa_2048_csr_from_python_cryptography_is_signed() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let issued = ca.sign_csr(RSA_2048_CSR).unwrap();
        assert!(issued.private_key_pem.is_none());
        assert!(verifies(&ca, &issued.der));
        assert!(contains(&issued.der, b"rsa-device"));
        let csr = CertificateSigningRequestDer::from_pem_slice(RSA_2048_CSR.as_bytes()).unwrap();
        assert_eq!(
            certificate_spki(&issued.der),
            csr_subject_public_key_info(&csr).unwrap()
        );
        assert_eq!(issued.certificate_id, certificate_id(&issued.der));
    }

    #[test]
    fn ec_p256_csrs_keep_their_exact_public_key() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        for pem in [EC_P256_CSR, EC_P256_SHA384_CSR] {
            let issued = ca.sign_csr(pem).unwrap();
            assert!(verifies(&ca, &issued.der));
            let csr = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(
                certificate_spki(&issued.der),
                csr_subject_public_key_info(&csr).unwrap()
            );
        }
    }

    #[test]
    fn tampered_csr_is_refused() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let csr = CertificateSigningRequestDer::from_pem_slice(EC_P256_CSR.as_bytes()).unwrap();
        let mut der = csr.as_ref().to_vec();
        // Change one letter of the subject ("ec-device" → "ec-devicf").
        let at = der.windows(9).position(|w| w == b"ec-device").unwrap() + 8;
        der[at] ^= 0x03;
        let text = pem_encode("CERTIFICATE REQUEST", &der);
        let err = ca.sign_csr(&text).unwrap_err();
        assert!(matches!(err, PkiError::CsrSignature), "{err}");
        assert_eq!(err.to_string(), "CSR signature does not verify");
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        use base64ct::{Base64, Encoding};
        let body = Base64::encode_string(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let err = ca.sign_csr(RSA_1024_CSR).unwrap_err();
        assert!(matches!(err, PkiError::CsrUnsupportedKey(_)), "{err}");
        assert!(err.to_string().contains("1024 bits"), "{err}");
    }

    #[test]
    fn non_pem_and_garbage_csrs_are_refused() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        assert!(matches!(
            ca.sign_csr("hello").unwrap_err(),
            PkiError::CsrNotPem
        ));
        // A certificate is not a CSR.
        let cert = ca.issue("x").unwrap().certificate_pem;
        assert!(matches!(
            ca.sign_csr(&cert).unwrap_err(),
            PkiError::CsrNotPem
        ));
        let garbage = pem_encode("CERTIFICATE REQUEST", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            ca.sign_csr(&garbage).unwrap_err(),
            PkiError::CsrMalformed
        ));
        let huge = "A".repeat(MAX_CSR_PEM_LEN + 1);
        assert!(matches!(
            ca.sign_csr(&huge).unwrap_err(),
            PkiError::CsrTooLarge(_)
        ));
    }

    #[test]
    fn csr_requesting_ca_gets_an_end_entity_certificate() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_only("sneaky");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let issued = ca.sign_csr(&csr).unwrap();
        // basicConstraints (2.5.29.19) holds OCTET STRING { SEQUENCE {} } (cA FALSE), not
        // OCTET STRING { SEQUENCE { BOOLEAN TRUE } }.
        let oid = [0x06, 0x03, 0x55, 0x1d, 0x13];
        let at = issued.der.windows(5).position(|w| w == oid).unwrap();
        let extension = &issued.der[at..at + 12];
        assert!(
            contains(extension, &[0x04, 0x02, 0x30, 0x00]),
            "{extension:02x?}"
        );
        assert!(!contains(extension, &[0x30, 0x03, 0x01, 0x01, 0xff]));
        assert!(verifies(&ca, &issued.der));
    }

    #[test]
    fn server_identity_names_localhost_and_loopback() {
        let ca = CertificateAuthority::new("Test CA").unwrap();
        let identity = ca
            .server_identity(&["iot.example".into(), "10.0.0.1".into()])
            .unwrap();
        assert_eq!(identity.chain.len(), 1);
        let der = identity.chain[0].as_ref();
        assert!(contains(der, b"localhost"));
        assert!(contains(der, b"iot.example"));
        assert!(contains(der, &[127, 0, 0, 1]));
        assert!(contains(der, &[10, 0, 0, 1]));
        assert!(matches!(
            ca.server_identity(&["b\u{e4}d.example".into()])
                .unwrap_err(),
            PkiError::InvalidServerName(_)
        ));
    }

    #[test]
    fn rsa_modulus_bits_counts_significant_bits() {
        // BIT STRING contents: 0 unused bits, SEQUENCE { INTEGER 0x00 0x80 0x01, INTEGER 3 }.
        let key = [
            0x00, 0x30, 0x08, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x01, 0x03,
        ];
        assert_eq!(rsa_modulus_bits(&key), Some(16));
        assert_eq!(rsa_modulus_bits(&[0x01]), None);
        assert!(read_tlv(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 0x00]).is_none());
    }
}
