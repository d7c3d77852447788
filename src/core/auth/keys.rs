//! Key and certificate formats, without OpenSSL: password-encrypted PKCS#8 keys
//! (`-----BEGIN ENCRYPTED PRIVATE KEY-----`) and PKCS#12 bundles (`.p12` / `.pfx`).
//!
//! Both end up as what rustls takes: a PEM certificate chain and an unencrypted PEM key.
//!
//! Supported encryptions: PBES2 with PBKDF2 (HMAC-SHA1/SHA-224/SHA-256/SHA-384/SHA-512) or
//! scrypt and AES-128/192/256-CBC (what `openssl pkcs8 -topk8 -v2 ...`, `openssl pkcs12
//! -export` and Python cryptography's `BestAvailableEncryption` write) and PBES2 with
//! DES-EDE3-CBC; for PKCS#12 also the legacy `pbeWithSHAAnd3-KeyTripleDES-CBC` and
//! `pbeWithSHAAnd40BitRC2-CBC` (`openssl pkcs12 -legacy`, old Windows/Java exports), with or
//! without a MAC. PBES1 with MD5 or single DES is not supported.
//!
//! Error messages never contain a password or key material.

use pkcs8::der::pem::{self, LineEnding};
use pkcs8::pkcs5;
use pkcs8::EncryptedPrivateKeyInfoRef;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::core::error::{Error, Result};
use crate::core::secret::Secret;

/// A certificate chain (PEM) and private key (PEM, unencrypted; PKCS#8 or as given) ready for
/// rustls.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The certificate chain, PEM: the device (leaf) certificate first, then any others.
    pub cert_pem: Vec<u8>,
    /// The unencrypted private key, PEM.
    pub key_pem: Secret<Vec<u8>>,
}

const ENCRYPTED_BEGIN: &[u8] = b"-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_END: &[u8] = b"-----END ENCRYPTED PRIVATE KEY-----";

/// Decrypts a password-protected PKCS#8 PEM key (`ENCRYPTED PRIVATE KEY`) into an unencrypted
/// PKCS#8 PEM key (`PRIVATE KEY`). Input without an `ENCRYPTED PRIVATE KEY` section is returned
/// unchanged (an unencrypted PKCS#1, PKCS#8 or SEC1 key needs no password).
///
/// # Errors
/// [`Error::Config`] when the password is wrong, the key is corrupt, its encryption is not
/// supported, or it uses the legacy OpenSSL PEM encryption (`Proc-Type: 4,ENCRYPTED`).
pub fn decrypt_private_key_pem(key_pem: &[u8], password: &[u8]) -> Result<Secret<Vec<u8>>> {
    let Some(begin) = find(key_pem, ENCRYPTED_BEGIN) else {
        if find(key_pem, b"Proc-Type: 4,ENCRYPTED").is_some() {
            return Err(Error::Config(
                "the private key uses the legacy OpenSSL PEM encryption ('Proc-Type: 4,ENCRYPTED'), \
                 which is not supported; convert it to encrypted PKCS#8 with \
                 'openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key.p8.pem' \
                 (or to an unencrypted key)"
                    .into(),
            ));
        }
        return Ok(Secret::new(key_pem.to_vec()));
    };
    let after_begin = key_pem
        .get(begin.saturating_add(ENCRYPTED_BEGIN.len())..)
        .unwrap_or_default();
    let end = find(after_begin, ENCRYPTED_END).ok_or_else(|| {
        Error::Config(
            "the encrypted private key has no '-----END ENCRYPTED PRIVATE KEY-----' line".into(),
        )
    })?;
    let body = after_begin.get(..end).unwrap_or_default();
    let der = decode_base64_body(body)?;

    let info = EncryptedPrivateKeyInfoRef::try_from(der.as_slice()).map_err(|_| {
        Error::Config(
            "the encrypted private key is corrupt (not a PKCS#8 EncryptedPrivateKeyInfo)".into(),
        )
    })?;
    let document = info.decrypt(password).map_err(|e| match e {
        pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::UnsupportedAlgorithm { oid })
        | pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::AlgorithmParametersInvalid { oid }) => {
            Error::Config(format!(
                "the private key is encrypted with an unsupported algorithm or parameters \
                 (OID {oid}); supported: PBES2 with PBKDF2 or scrypt and AES-CBC or DES-EDE3-CBC"
            ))
        }
        pkcs8::Error::EncryptedPrivateKey(pkcs5::Error::NoPbes1CryptSupport) => Error::Config(
            "the private key is encrypted with legacy PBES1, which is not supported; \
             re-encrypt it with 'openssl pkcs8 -topk8 -v2 aes-256-cbc'"
                .into(),
        ),
        _ => Error::Config(
            "cannot decrypt the private key: wrong password, or the key file is corrupt".into(),
        ),
    })?;
    // A wrong password occasionally yields valid padding; the plaintext must be a PKCS#8 key.
    if pkcs8::PrivateKeyInfoRef::try_from(document.as_bytes()).is_err() {
        return Err(Error::Config(
            "cannot decrypt the private key: wrong password, or the key file is corrupt".into(),
        ));
    }
    let pem = document
        .to_pem("PRIVATE KEY", LineEnding::LF)
        .map_err(|_| Error::Config("cannot encode the decrypted private key as PEM".into()))?;
    Ok(Secret::new(pem.as_bytes().to_vec()))
}

/// Reads a PKCS#12 (`.p12` / `.pfx`, DER) bundle: the certificate matching the private key
/// first, then the other certificates (issuers in chain order, then the rest); the key as
/// unencrypted PKCS#8 PEM. `None` stands for the empty password.
///
/// # Errors
/// [`Error::Config`] when the password is wrong or the file is corrupt, when the file has no
/// private key or no certificate (matching the key), or when it uses an unsupported encryption.
pub fn identity_from_pkcs12(der: &[u8], password: Option<&[u8]>) -> Result<Identity> {
    if find(der, b"-----BEGIN").is_some() {
        return Err(Error::Config(
            "the PKCS#12 file is PEM text, not a binary .p12/.pfx bundle; give the certificate \
             and private key PEM files instead"
                .into(),
        ));
    }
    if der.first() != Some(&0x30) {
        return Err(Error::Config(
            "the PKCS#12 file is not a DER .p12/.pfx bundle".into(),
        ));
    }
    let password = match password {
        None => "",
        Some(p) => std::str::from_utf8(p)
            .map_err(|_| Error::Config("the PKCS#12 password must be valid UTF-8 text".into()))?,
    };
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(der, password).map_err(p12_error)?;

    if archive.keys.is_empty() {
        return Err(Error::Config(
            "the PKCS#12 file contains no private key (only certificates?); \
             it must hold the device certificate and its private key"
                .into(),
        ));
    }
    if archive.certs.is_empty() {
        return Err(Error::Config(
            "the PKCS#12 file contains no certificate (only a private key?); \
             it must hold the device certificate and its private key"
                .into(),
        ));
    }

    let (key, leaf) = archive
        .keys
        .iter()
        .find_map(|key| leaf_for_key(key, &archive.certs).map(|leaf| (key, leaf)))
        .ok_or_else(|| {
            Error::Config(
                "the PKCS#12 file contains no certificate matching its private key".into(),
            )
        })?;

    let mut cert_pem = Vec::new();
    for cert in chain_order(leaf, &archive.certs) {
        let block = pem::encode_string("CERTIFICATE", LineEnding::LF, cert.as_der())
            .map_err(|_| Error::Config("cannot encode a PKCS#12 certificate as PEM".into()))?;
        cert_pem.extend_from_slice(block.as_bytes());
    }
    let key_pem = pem::encode_string("PRIVATE KEY", LineEnding::LF, key.key.as_der())
        .map_err(|_| Error::Config("cannot encode the PKCS#12 private key as PEM".into()))?;
    Ok(Identity {
        cert_pem,
        key_pem: Secret::new(key_pem.into_bytes()),
    })
}

/// Maps a PKCS#12 error to a message that names the likely cause but no secret.
fn p12_error(e: p12_keystore::error::Error) -> Error {
    use p12_keystore::error::Error as E;
    let msg = match e {
        E::MacError(_) => {
            "cannot open the PKCS#12 file: wrong password, or the file is corrupt \
             (its integrity check failed)"
        }
        E::UnpadError | E::Pkcs5Error(_) | E::InvalidPrivateKey => {
            "cannot decrypt the PKCS#12 file: wrong password, or the file is corrupt"
        }
        E::UnsupportedEncryptionScheme | E::UnsupportedMacAlgorithm => {
            "the PKCS#12 file uses an unsupported encryption or MAC algorithm; supported: \
             PBES2 (PBKDF2 + AES-CBC), pbeWithSHAAnd3-KeyTripleDES-CBC, \
             pbeWithSHAAnd40BitRC2-CBC, and HMAC-SHA1/SHA-2 MACs"
        }
        E::InvalidParameters => {
            "the PKCS#12 file has invalid or excessive encryption parameters \
             (for example more than 1,000,000 key-derivation iterations)"
        }
        E::UnsupportedCertificateType => {
            "the PKCS#12 file contains a certificate that is not X.509"
        }
        _ => {
            "the PKCS#12 file cannot be read: it is not a valid .p12/.pfx bundle or it is \
             corrupt, or (for a file without an integrity MAC) a wrong password was given"
        }
    };
    Error::Config(msg.into())
}

/// The certificate belonging to `key`: the one with the same `localKeyId` attribute, else the
/// one whose public key matches the private key.
fn leaf_for_key<'a>(
    key: &p12_keystore::PrivateKeyBag,
    certs: &'a [p12_keystore::CertificateBag],
) -> Option<&'a p12_keystore::Certificate> {
    if let Some(id) = &key.local_key_id {
        let by_id = certs
            .iter()
            .find(|c| c.local_key_id.as_deref() == Some(id.as_ref()));
        if let Some(bag) = by_id {
            return Some(&bag.cert);
        }
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key.as_der().to_vec()));
    let signing_key = crate::core::net::tls::provider()
        .key_provider
        .load_private_key(der)
        .ok()?;
    certs
        .iter()
        .find(|bag| {
            let chain = vec![CertificateDer::from(bag.cert.as_der().to_vec())];
            CertifiedKey::new(chain, signing_key.clone())
                .keys_match()
                .is_ok()
        })
        .map(|bag| &bag.cert)
}

/// `leaf`, then its issuers as far as they are present, then every other certificate in file
/// order; duplicates dropped.
fn chain_order<'a>(
    leaf: &'a p12_keystore::Certificate,
    certs: &'a [p12_keystore::CertificateBag],
) -> Vec<&'a p12_keystore::Certificate> {
    let mut out: Vec<&p12_keystore::Certificate> = vec![leaf];
    let mut current = leaf;
    while current.subject() != current.issuer() {
        let issuer = certs.iter().map(|b| &b.cert).find(|c| {
            c.subject() == current.issuer() && !out.iter().any(|o| o.as_der() == c.as_der())
        });
        match issuer {
            Some(issuer) => {
                out.push(issuer);
                current = issuer;
            }
            None => break,
        }
    }
    for bag in certs {
        if !out.iter().any(|o| o.as_der() == bag.cert.as_der()) {
            out.push(&bag.cert);
        }
    }
    out
}

/// Decodes the base64 body of a PEM section, tolerating any line length and CRLF.
fn decode_base64_body(body: &[u8]) -> Result<Vec<u8>> {
    if body.contains(&b':') {
        return Err(Error::Config(
            "the encrypted private key has PEM headers, which are not supported".into(),
        ));
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    // Re-wrap at 64 columns so the strict RFC 7468 decoder accepts it.
    let mut canonical = Vec::with_capacity(compact.len() + compact.len() / 64 + 80);
    canonical.extend_from_slice(ENCRYPTED_BEGIN);
    canonical.push(b'\n');
    for line in compact.chunks(64) {
        canonical.extend_from_slice(line);
        canonical.push(b'\n');
    }
    canonical.extend_from_slice(ENCRYPTED_END);
    canonical.push(b'\n');
    let (_label, der) = pem::decode_vec(&canonical).map_err(|_| {
        Error::Config("the encrypted private key is not valid PEM (bad base64 body)".into())
    })?;
    Ok(der)
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PW: &str = "S3ntinel-pw!";

    /// Test material in a unique temporary directory, removed on drop: an RSA device key with a
    /// self-signed certificate, and an EC CA that signed a second device certificate.
    struct Material(PathBuf);

    impl Drop for Material {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl Material {
        fn new(name: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "awsiot-rs-keys-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let m = Self(dir);
            std::fs::write(m.0.join("leaf.ext"), "basicConstraints=CA:FALSE\n").unwrap();
            m.openssl("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem");
            m.openssl("req -x509 -new -key key.pem -subj /CN=self-signed -days 2 -out self.pem");
            m.openssl("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key");
            m.openssl("req -x509 -new -key ca.key -subj /CN=test-ca -days 2 -out ca.pem");
            m.openssl("req -new -key key.pem -subj /CN=device -out device.csr");
            m.openssl(
                "x509 -req -in device.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile leaf.ext -out device.pem",
            );
            m
        }

        /// Runs openssl (arguments split on whitespace) in the directory; returns whether it
        /// succeeded (printing its stderr when not).
        fn try_openssl(&self, args: &str) -> bool {
            let args: Vec<&str> = args.split_whitespace().collect();
            let out = Command::new("openssl")
                .args(&args)
                .current_dir(&self.0)
                .output()
                .expect("openssl must be installed to run these tests");
            if !out.status.success() {
                eprintln!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            out.status.success()
        }

        fn openssl(&self, args: &str) {
            assert!(self.try_openssl(args), "openssl {args} failed");
        }

        fn read(&self, file: &str) -> Vec<u8> {
            std::fs::read(self.0.join(file)).unwrap()
        }

        fn cert_der(&self, file: &str) -> Vec<u8> {
            CertificateDer::from_pem_slice(&self.read(file))
                .unwrap()
                .to_vec()
        }

        fn key_der(&self) -> Vec<u8> {
            PrivateKeyDer::from_pem_slice(&self.read("key.pem"))
                .unwrap()
                .secret_der()
                .to_vec()
        }
    }

    fn config_msg<T: std::fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Config(m)) => m,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    fn certs_of(identity: &Identity) -> Vec<Vec<u8>> {
        CertificateDer::pem_slice_iter(&identity.cert_pem)
            .map(|c| c.unwrap().to_vec())
            .collect()
    }

    /// The identity's key is PKCS#8, loads in rustls (ring) and matches its first certificate.
    fn assert_key_matches(identity: &Identity) {
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.expose()).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .unwrap();
        CertifiedKey::new(chain, signing).keys_match().unwrap();
    }

    #[test]
    fn decrypts_encrypted_pkcs8() {
        let m = Material::new("p8");
        m.openssl(&format!(
            "pkcs8 -topk8 -v2 aes-256-cbc -passout pass:{PW} -in key.pem -out enc.pem"
        ));
        // What older tools write: PBKDF2 with HMAC-SHA1, and 3DES.
        m.openssl(&format!(
            "pkcs8 -topk8 -v2 des3 -v2prf hmacWithSHA1 -passout pass:{PW} -in key.pem -out enc3.pem"
        ));
        m.openssl(&format!(
            "pkcs8 -topk8 -v2 aes-128-cbc -passout pass:{PW} -in ca.key -out ca-enc.pem"
        ));
        let enc = m.read("enc.pem");
        assert!(enc.starts_with(ENCRYPTED_BEGIN));

        for file in ["enc.pem", "enc3.pem"] {
            let pem = decrypt_private_key_pem(&m.read(file), PW.as_bytes()).unwrap();
            assert!(pem.expose().starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
            let key = PrivateKeyDer::from_pem_slice(pem.expose()).unwrap();
            assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
            assert_eq!(key.secret_der(), m.key_der().as_slice(), "{file}");
        }
        let ec = decrypt_private_key_pem(&m.read("ca-enc.pem"), PW.as_bytes()).unwrap();
        rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_slice(ec.expose()).unwrap())
            .unwrap();

        // CRLF line endings and text around the section are fine.
        let crlf = String::from_utf8(enc).unwrap().replace('\n', "\r\n");
        let wrapped = format!("Bag Attributes\r\n{crlf}trailing\n");
        let pem = decrypt_private_key_pem(wrapped.as_bytes(), PW.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pem.expose()).unwrap();
        assert_eq!(key.secret_der(), m.key_der().as_slice());
    }

    #[test]
    fn wrong_password_and_legacy_encryption_are_config_errors() {
        let m = Material::new("p8bad");
        m.openssl(&format!(
            "pkcs8 -topk8 -v2 aes-256-cbc -passout pass:{PW} -in key.pem -out enc.pem"
        ));
        m.openssl(&format!(
            "rsa -aes256 -traditional -passout pass:{PW} -in key.pem -out legacy.pem"
        ));
        let enc = m.read("enc.pem");
        for wrong in ["wrong-password", "", "S3ntinel-pw"] {
            let msg = config_msg(decrypt_private_key_pem(&enc, wrong.as_bytes()));
            assert!(msg.contains("wrong password"), "{msg}");
            assert!(!msg.contains(PW), "{msg}");
            assert!(wrong.is_empty() || !msg.contains(wrong), "{msg}");
        }
        let msg = config_msg(decrypt_private_key_pem(
            &m.read("legacy.pem"),
            PW.as_bytes(),
        ));
        assert!(msg.contains("Proc-Type"), "{msg}");

        let truncated = &enc[..enc.len() - 20];
        let msg = config_msg(decrypt_private_key_pem(truncated, PW.as_bytes()));
        assert!(msg.contains("END"), "{msg}");
    }

    #[test]
    fn unencrypted_key_is_returned_unchanged() {
        let m = Material::new("p8plain");
        for file in ["key.pem", "ca.key"] {
            let plain = m.read(file);
            let out = decrypt_private_key_pem(&plain, b"ignored").unwrap();
            assert_eq!(out.expose(), &plain);
        }
    }

    #[test]
    fn pkcs12_default_and_legacy() {
        let m = Material::new("p12");
        let export = format!("pkcs12 -export -inkey key.pem -passout pass:{PW}");
        let chain = "-in device.pem -certfile ca.pem";
        m.openssl(&format!("{export} {chain} -out default.p12"));
        m.openssl(&format!("{export} -in self.pem -out self.p12"));
        let device_and_ca = vec!["device.pem", "ca.pem"];
        let mut cases = vec![
            ("default.p12", device_and_ca.clone()),
            ("self.p12", vec!["self.pem"]),
        ];
        if m.try_openssl(&format!("{export} -legacy {chain} -out legacy.p12")) {
            cases.push(("legacy.p12", device_and_ca.clone()));
            // Legacy encryption without an integrity MAC.
            m.openssl(&format!("{export} -legacy -nomac {chain} -out nomac.p12"));
            cases.push(("nomac.p12", device_and_ca.clone()));
        } else {
            eprintln!("openssl pkcs12 -legacy is not available: skipping the legacy cases");
        }

        for (file, expected) in &cases {
            let p12 = m.read(file);
            let identity = identity_from_pkcs12(&p12, Some(PW.as_bytes()))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            let expected: Vec<Vec<u8>> = expected.iter().map(|f| m.cert_der(f)).collect();
            assert_eq!(certs_of(&identity), expected, "{file}");
            let key_pem = identity.key_pem.expose();
            assert!(key_pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
            let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
            assert_eq!(key.secret_der(), m.key_der().as_slice(), "{file}");
            assert_key_matches(&identity);
            assert!(!format!("{identity:?}").contains("PRIVATE KEY"));

            for wrong in [Some(&b"wrong"[..]), None] {
                let msg = config_msg(identity_from_pkcs12(&p12, wrong));
                assert!(msg.contains("wrong password"), "{file}: {msg}");
                assert!(!msg.contains(PW), "{msg}");
            }
        }
    }

    #[test]
    fn pkcs12_empty_password_and_unencrypted() {
        let m = Material::new("p12nopw");
        let export = "pkcs12 -export -inkey key.pem -in self.pem -passout pass:";
        m.openssl(&format!("{export} -out empty.p12"));
        m.openssl(&format!(
            "{export} -keypbe NONE -certpbe NONE -nomac -out plain.p12"
        ));
        for file in ["empty.p12", "plain.p12"] {
            for password in [None, Some(&b""[..])] {
                let identity = identity_from_pkcs12(&m.read(file), password)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                assert_eq!(certs_of(&identity), vec![m.cert_der("self.pem")], "{file}");
                assert_key_matches(&identity);
            }
        }
    }

    #[test]
    fn pkcs12_missing_key_or_certificate() {
        let m = Material::new("p12missing");
        let export = format!("pkcs12 -export -passout pass:{PW}");
        m.openssl(&format!("{export} -nokeys -in self.pem -out certonly.p12"));
        let r = identity_from_pkcs12(&m.read("certonly.p12"), Some(PW.as_bytes()));
        let msg = config_msg(r);
        assert!(msg.contains("no private key"), "{msg}");

        if m.try_openssl(&format!(
            "{export} -nocerts -inkey key.pem -out keyonly.p12"
        )) {
            let r = identity_from_pkcs12(&m.read("keyonly.p12"), Some(PW.as_bytes()));
            let msg = config_msg(r);
            assert!(msg.contains("no certificate"), "{msg}");
        }
    }

    #[test]
    fn pkcs12_rejects_garbage_and_pem() {
        let msg = config_msg(identity_from_pkcs12(b"-----BEGIN CERTIFICATE-----\n", None));
        assert!(msg.contains("PEM"), "{msg}");
        let msg = config_msg(identity_from_pkcs12(b"\x30\x03\x02\x01\x03", Some(b"pw")));
        assert!(msg.contains("not a valid"), "{msg}");
        let msg = config_msg(identity_from_pkcs12(b"", None));
        assert!(msg.contains("not a DER"), "{msg}");
        let msg = config_msg(identity_from_pkcs12(b"\x30\x00", Some(&[0xff, 0xfe])));
        assert!(msg.contains("UTF-8"), "{msg}");
    }
}
