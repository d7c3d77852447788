//! What proves who the client is: [`keys`] (PEM, PKCS#8 encrypted, PKCS#12), [`sigv4`]
//! (presigned WebSocket URLs for IAM credentials), [`credentials`] (providers and their cache)
//! and [`custom_auth`] (AWS custom-authorizer fields in the user name, headers or query), with
//! [`uri`] the percent-encoding both SigV4 and custom authorizers use.

pub mod credentials;
pub mod custom_auth;
pub mod keys;
pub mod sigv4;
pub mod uri;
