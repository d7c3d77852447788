//! Where SigV4 credentials come from, per connection attempt, with caching that never uses
//! credentials close to their expiry.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::core::auth::sigv4::AwsCredentials;
use crate::core::error::Result;

/// What a provider returns.
pub type CredentialsFuture = Pin<Box<dyn Future<Output = Result<AwsCredentials>> + Send>>;

/// A source of AWS credentials, asked before every connection attempt (through [`Cached`]).
pub trait CredentialsProvider: Send + Sync {
    /// Fetches credentials. Errors surface as `AuthError` on the connection attempt.
    fn credentials(&self) -> CredentialsFuture;
}

/// Fixed credentials (keys given in code or read from the environment).
pub struct Static(pub AwsCredentials);

impl CredentialsProvider for Static {
    fn credentials(&self) -> CredentialsFuture {
        let c = self.0.clone();
        Box::pin(async move { Ok(c) })
    }
}

/// Credentials with an expiry are reused until `margin` before it (or until the endpoint refuses
/// them: [`Cached::invalidate`]); credentials without one are fetched again for every attempt (a
/// callable provider decides itself what to cache).
pub struct Cached {
    inner: Arc<dyn CredentialsProvider>,
    margin: Duration,
    cache: Mutex<Option<AwsCredentials>>,
}

impl Cached {
    /// Wraps a provider.
    #[must_use]
    pub fn new(inner: Arc<dyn CredentialsProvider>, margin: Duration) -> Self {
        Self {
            inner,
            margin,
            cache: Mutex::new(None),
        }
    }

    fn cached(&self, now: SystemTime) -> Option<AwsCredentials> {
        let guard = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = guard.as_ref()?;
        let expiry = c.expiry?;
        (expiry.duration_since(now).ok()? > self.margin).then(|| c.clone())
    }

    /// Forgets the cached credentials: the endpoint refused them (HTTP 401/403 on the
    /// WebSocket upgrade), so whatever their expiry says, the next attempt asks the provider.
    pub fn invalidate(&self) {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Cached credentials still far enough from expiry, or fresh ones.
    ///
    /// # Errors
    /// Whatever the provider reports.
    pub async fn get(&self, now: SystemTime) -> Result<AwsCredentials> {
        if let Some(c) = self.cached(now) {
            return Ok(c);
        }
        let fresh = self.inner.credentials().await?;
        *self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::secret::Secret;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting {
        calls: AtomicUsize,
        lifetime: Option<Duration>,
    }

    impl CredentialsProvider for Counting {
        fn credentials(&self) -> CredentialsFuture {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let expiry = self
                .lifetime
                .map(|l| SystemTime::UNIX_EPOCH + Duration::from_secs(1000) + l);
            Box::pin(async move {
                Ok(AwsCredentials {
                    access_key_id: format!("AKID{n}"),
                    secret_access_key: Secret::new("s".into()),
                    session_token: None,
                    expiry,
                })
            })
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[tokio::test]
    async fn credentials_are_reused_until_the_margin_before_expiry() {
        let p = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Some(Duration::from_secs(900)),
        });
        let c = Cached::new(p.clone(), Duration::from_secs(300));
        assert_eq!(c.get(at(1000)).await.unwrap().access_key_id, "AKID0");
        assert_eq!(c.get(at(1500)).await.unwrap().access_key_id, "AKID0");
        assert_eq!(
            c.get(at(1601)).await.unwrap().access_key_id,
            "AKID1",
            "within 300 s of expiry: refreshed"
        );
    }

    #[tokio::test]
    async fn rejected_credentials_are_fetched_again_despite_a_far_expiry() {
        let p = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: Some(Duration::from_secs(6 * 3600)),
        });
        let c = Cached::new(p.clone(), Duration::from_secs(300));
        assert_eq!(c.get(at(1000)).await.unwrap().access_key_id, "AKID0");
        c.invalidate();
        assert_eq!(
            c.get(at(1001)).await.unwrap().access_key_id,
            "AKID1",
            "the endpoint refused AKID0: the provider is asked again"
        );
        assert_eq!(c.get(at(1002)).await.unwrap().access_key_id, "AKID1");
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn credentials_without_expiry_are_fetched_every_time() {
        let p = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            lifetime: None,
        });
        let c = Cached::new(p.clone(), Duration::from_secs(300));
        c.get(at(1)).await.unwrap();
        c.get(at(2)).await.unwrap();
        assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    }
}
