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

/// Bytes of tag lists the cache holds by default, as [`weight`] counts them. A listing holds at
/// most `ClientSettings::max_tags` tags of at most 128 characters (about 15 MiB), so at least
/// four of the largest possible lists fit; a typical list of a few hundred tags takes tens of KiB.
pub const TAG_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Tag lists shared by every Image of every cluster.
#[derive(Clone)]
pub struct TagCache {
    client: Arc<RegistryClient>,
    cache: Option<Cache<TagKey, Arc<Vec<String>>>>,
}

impl TagCache {
    /// A cache with entries living `ttl` and [`TAG_CACHE_BYTES`] of room; a zero TTL disables
    /// caching (every ask lists).
    pub fn new(client: Arc<RegistryClient>, ttl: Duration) -> Self {
        Self::with_budget(client, ttl, TAG_CACHE_BYTES)
    }

    /// As [`TagCache::new`], holding at most `bytes` of tag lists. Entries are weighed by size,
    /// not counted: a tenant's registry decides how large a list is, and the number of entries
    /// says nothing about memory.
    pub fn with_budget(client: Arc<RegistryClient>, ttl: Duration, bytes: u64) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(ttl)
                .weigher(weight)
                .max_capacity(bytes)
                .support_invalidation_closures()
                .build()
        });
        Self { client, cache }
    }

    /// Bytes the cached tag lists take, as [`weight`] counts them (diagnostics and tests).
    pub async fn bytes_held(&self) -> u64 {
        let Some(cache) = &self.cache else {
            return 0;
        };
        cache.run_pending_tasks().await;
        cache.iter().map(|(k, v)| u64::from(weight(&k, &v))).sum()
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

/// What an entry costs in memory: its key's strings, and every tag with its `String` header.
pub fn weight(key: &TagKey, tags: &Arc<Vec<String>>) -> u32 {
    let string = std::mem::size_of::<String>();
    let key_bytes = key.registry.len() + key.repository.len() + key.credential.len();
    let tag_bytes: usize = tags.iter().map(|t| t.len() + string).sum();
    let total =
        std::mem::size_of::<TagKey>() + key_bytes + std::mem::size_of::<Vec<String>>() + tag_bytes;
    u32::try_from(total).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_weigh_their_tags() {
        let key = TagKey {
            registry: "r.example".into(),
            repository: "team/app".into(),
            credential: "anonymous".into(),
            tls: TlsMode::Verify,
        };
        let empty = weight(&key, &Arc::new(Vec::new()));
        let tags: Vec<String> = (0..1000).map(|i| format!("{i:0>10}")).collect();
        let full = weight(&key, &Arc::new(tags));
        let per_tag = 10 + std::mem::size_of::<String>() as u32;
        assert_eq!(full - empty, 1000 * per_tag);
    }
}
