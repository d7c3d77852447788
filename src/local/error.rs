//! The one error type of the embedded core's public API. Messages say what was wrong and what
//! is allowed, and never carry key material or credentials.

/// What can go wrong starting, configuring or driving the local core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A configuration value or argument is invalid.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound or another socket operation failed.
    #[error("{0}")]
    Io(String),
    /// Certificate or key generation failed.
    #[error("{0}")]
    Pki(String),
    /// The named thing, certificate, template or client does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The core is not running (not started yet, or stopped).
    #[error("the local AWS IoT Core is not running (start() it first)")]
    NotRunning,
}

/// Result of the local core's API.
pub type LocalResult<T> = std::result::Result<T, LocalError>;
