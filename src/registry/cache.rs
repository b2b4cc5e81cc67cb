//! The process-wide tag cache: one listing per (registry, repository, credential, TLS mode) per TTL.

use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::client::{RegistryClient, TlsMode};
use super::credentials::{Credential, fingerprint};
use super::error::RegistryError;
use super::reference::ImageRef;

/// Cache key. The credential fingerprint keeps a tag list fetched with one set of credentials
/// from ever answering a request made with another (private repositories must not leak across
/// namespaces or clusters); the TLS mode keeps an unverified answer from serving a verified ask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey {
    /// Registry host[:port].
    pub registry: String,
    /// Repository path.
    pub repository: String,
    /// `fingerprint()` of the credential, `anonymous` without one.
    pub credential: String,
    /// How the registry is reached.
    pub tls: TlsMode,
}

/// Tag lists shared by every Image of every cluster.
#[derive(Clone)]
pub struct TagCache {
    client: Arc<RegistryClient>,
    cache: Option<Cache<TagKey, Arc<Vec<String>>>>,
}

impl TagCache {
    /// A cache with entries living `ttl`; a zero TTL disables caching (every ask lists).
    pub fn new(client: Arc<RegistryClient>, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(ttl)
                .max_capacity(100_000)
                .support_invalidation_closures()
                .build()
        });
        Self { client, cache }
    }

    /// The registry client behind the cache.
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.client
    }

    /// Tags of `image`; concurrent misses for one key share one request. Errors are not cached.
    pub async fn tags(
        &self,
        image: &ImageRef,
        credential: Option<&Credential>,
        tls: TlsMode,
    ) -> Result<(Arc<Vec<String>>, bool), RegistryError> {
        let Some(cache) = &self.cache else {
            crate::metrics::cache_access(false);
            let tags = self.client.list_tags(image, credential, tls).await?;
            return Ok((Arc::new(tags), false));
        };
        let key = TagKey {
            registry: image.registry.clone(),
            repository: image.repository.clone(),
            credential: fingerprint(credential),
            tls,
        };
        if let Some(hit) = cache.get(&key).await {
            crate::metrics::cache_access(true);
            return Ok((hit, true));
        }
        crate::metrics::cache_access(false);
        let client = self.client.clone();
        let (image, credential) = (image.clone(), credential.cloned());
        cache
            .try_get_with(key, async move {
                client
                    .list_tags(&image, credential.as_ref(), tls)
                    .await
                    .map(Arc::new)
            })
            .await
            .map(|tags| (tags, false))
            .map_err(|e: Arc<RegistryError>| (*e).clone())
    }

    /// Drops the cached lists of a repository (all credentials, and every registry when
    /// `registry` is None), e.g. after a registry webhook.
    pub async fn invalidate(&self, registry: Option<&str>, repository: &str) {
        if let Some(cache) = &self.cache {
            let (r, p) = (registry.map(str::to_string), repository.to_string());
            let _ = cache.invalidate_entries_if(move |k, _| {
                k.repository == p && r.as_ref().is_none_or(|r| *r == k.registry)
            });
            cache.run_pending_tasks().await;
        }
    }
}
