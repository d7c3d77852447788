//! Custom authorizers registered with the core: their names and token settings, and the hook
//! that decides (in Python, a plain or async callable; in Rust tests, a closure).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::local::authorizer_request::{AuthorizerRequest, AuthorizerSpec};

/// What an authorizer decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizerVerdict {
    /// `isAuthenticated`.
    pub allow: bool,
    /// `principalId` (defaults to the authorizer's name).
    pub principal_id: String,
    /// `disconnectAfterInSeconds`: the connection is closed after it
    /// (`CUSTOMAUTH_TTL_EXPIRATION`).
    pub disconnect_after: Option<Duration>,
}

/// The boxed future an [`AuthorizerHook`] returns.
pub type VerdictFuture = Pin<Box<dyn Future<Output = Result<AuthorizerVerdict, String>> + Send>>;

/// Decides one authorization request. Must not block the calling (tokio) thread.
pub trait AuthorizerHook: Send + Sync + std::fmt::Debug {
    /// Starts deciding `request`; the core bounds the wait with its authorizer timeout.
    fn authorize(&self, request: AuthorizerRequest) -> VerdictFuture;
}

/// The authorizers of one core; the first one added is the default (used when a request
/// names none).
#[derive(Debug, Default)]
pub struct Authorizers {
    entries: RwLock<Vec<(AuthorizerSpec, Arc<dyn AuthorizerHook>)>>,
}

impl Authorizers {
    /// Adds (or replaces) an authorizer.
    pub fn add(&self, spec: AuthorizerSpec, hook: Arc<dyn AuthorizerHook>) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|(s, _)| s.name != spec.name);
        entries.push((spec, hook));
    }

    /// Whether any authorizer is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The spec of `name`, or of the default authorizer for `None`.
    #[must_use]
    pub fn find(&self, name: Option<&str>) -> Option<AuthorizerSpec> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        match name {
            Some(n) => entries.iter().find(|(s, _)| s.name == n),
            None => entries.first(),
        }
        .map(|(s, _)| s.clone())
    }

    /// The hook of `name`.
    #[must_use]
    pub fn hook(&self, name: &str) -> Option<Arc<dyn AuthorizerHook>> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, h)| Arc::clone(h))
    }
}
