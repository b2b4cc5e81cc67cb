//! The registry client against the real registry: pagination by Link header, digests, the tag
//! cache's coalescing, and 429 back-off through a throttling proxy in front of the registry.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use kimup::registry::reference;
use kimup::registry::{ClientSettings, RegistryClient, TagCache, TlsMode};
use kimup_testenv::httpfault::{FaultPlan, HttpFault, HttpFaultProxy};

fn client(page_size: usize) -> Arc<RegistryClient> {
    kimup_testenv::install_crypto_provider();
    Arc::new(
        RegistryClient::new(ClientSettings {
            page_size,
            max_retries: 3,
            ..ClientSettings::default()
        })
        .expect("client"),
    )
}

/// Debian's distribution 2.8 ignores `n`/`last` and sends every tag at once, unsorted: one
/// request, every tag, no loop.
#[tokio::test]
async fn lists_every_tag_from_the_real_registry_in_one_request() {
    let env = common::env();
    let reg = env.plain_registry();
    let tags: Vec<String> = (0..7).map(|i| format!("1.{i}.0")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    reg.push_tags("client/paged", &refs).await.expect("push");
    let c = client(3);
    let image = reference::parse(&format!("{}/client/paged", reg.host)).expect("ref");
    let got = c
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .expect("list");
    assert_eq!(got, tags);
    assert_eq!(
        c.request_counts()[&(reg.host.clone(), "tags".to_string())],
        1
    );
}

#[derive(Clone)]
struct Pager {
    upstream: String,
    link: bool,
    http: reqwest::Client,
}

/// In front of the real registry, pages tag lists as Docker Hub and GHCR do: at most `n` tags,
/// after `last`, with a `Link` header to the next page (or, with `link: false`, without one).
async fn page(State(p): State<Pager>, req: Request) -> Response<Body> {
    let uri = req.uri().clone();
    let query: std::collections::HashMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let full: serde_json::Value = p
        .http
        .get(format!("{}{}", p.upstream, uri.path()))
        .send()
        .await
        .expect("upstream")
        .json()
        .await
        .expect("json");
    let mut tags: Vec<String> = serde_json::from_value(full["tags"].clone()).expect("tags");
    tags.sort();
    let n: usize = query.get("n").and_then(|n| n.parse().ok()).unwrap_or(100);
    let after = query.get("last").cloned().unwrap_or_default();
    let rest: Vec<String> = tags.into_iter().filter(|t| *t > after).collect();
    let this: Vec<String> = rest.iter().take(n).cloned().collect();
    let mut resp = Response::builder().status(200);
    if p.link && rest.len() > n {
        let last = this.last().cloned().unwrap_or_default();
        resp = resp.header(
            "Link",
            format!("<{}?n={n}&last={last}>; rel=\"next\"", uri.path()),
        );
    }
    resp.body(Body::from(
        serde_json::json!({"name": full["name"], "tags": this}).to_string(),
    ))
    .expect("response")
}

async fn pager(env: &kimup_testenv::TestEnv, link: bool) -> std::net::SocketAddr {
    let state = Pager {
        upstream: env.plain_registry().base_url(),
        link,
        http: reqwest::Client::new(),
    };
    let app = Router::new().fallback(page).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn follows_link_headers_and_n_last_paging() {
    let env = common::env();
    let tags: Vec<String> = (0..7).map(|i| format!("2.{i}.0")).collect();
    let refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    env.plain_registry()
        .push_tags("client/linked", &refs)
        .await
        .expect("push");
    for link in [true, false] {
        let addr = pager(env, link).await;
        let c = client(3);
        let image = reference::parse(&format!("{addr}/client/linked")).expect("ref");
        let got = c
            .list_tags(&image, None, TlsMode::PlainHttp)
            .await
            .expect("list");
        assert_eq!(got, tags, "link={link}");
        let requests = c.request_counts()[&(addr.to_string(), "tags".to_string())];
        // Pages of 3 + 3 + 1 tags: the short third page ends the listing either way.
        assert_eq!(requests, 3, "link={link}");
    }
}

#[tokio::test]
async fn manifest_digest_matches_the_registry() {
    let env = common::env();
    let reg = env.plain_registry();
    let pushed = reg
        .push_image("client/digest", "v1", "")
        .await
        .expect("push");
    let image = reference::parse(&format!("{}/client/digest", reg.host)).expect("ref");
    let got = client(100)
        .manifest_digest(&image, "v1", None, TlsMode::PlainHttp)
        .await
        .expect("digest");
    assert_eq!(got, pushed);
}

#[tokio::test]
async fn concurrent_misses_make_one_request() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/coalesce", &["1.0.0", "1.1.0"])
        .await
        .expect("push");
    // Listed, as --insecure-registry does: credentials may go to it over plain HTTP.
    let c = client_listing(&[&reg.host]);
    let cache = TagCache::new(c.clone(), Duration::from_secs(60));
    let image = reference::parse(&format!("{}/client/coalesce", reg.host)).expect("ref");
    let asks = (0..50).map(|_| {
        let (cache, image) = (cache.clone(), image.clone());
        tokio::spawn(async move { cache.tags(&image, None, TlsMode::PlainHttp).await })
    });
    for a in futures::future::join_all(asks).await {
        let (tags, _) = a.expect("join").expect("tags");
        assert_eq!(*tags, vec!["1.0.0".to_string(), "1.1.0".to_string()]);
    }
    assert_eq!(
        c.request_counts()[&(reg.host.clone(), "tags".to_string())],
        1
    );
    // Another credential set is another key: never served from the anonymous entry.
    let cred = kimup::registry::Credential {
        username: "someone".into(),
        password: "x".into(),
    };
    cache
        .tags(&image, Some(&cred), TlsMode::PlainHttp)
        .await
        .expect("tags");
    assert_eq!(
        c.request_counts()[&(reg.host.clone(), "tags".to_string())],
        2
    );
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    throttled: Arc<AtomicUsize>,
    http: reqwest::Client,
}

/// Answers 429 (Retry-After: 1) to the first two requests, then forwards to the real registry.
async fn throttle(State(p): State<Proxy>, req: Request) -> Response<Body> {
    if p.throttled.fetch_add(1, Ordering::SeqCst) < 2 {
        return Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("Retry-After", "1")
            .body(Body::from(
                r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#,
            ))
            .expect("response");
    }
    let url = format!("{}{}", p.upstream, req.uri());
    let resp = p.http.get(url).send().await.expect("upstream");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body");
    let mut out = Response::builder().status(status.as_u16());
    for (k, v) in &headers {
        out = out.header(k.as_str(), v.as_bytes());
    }
    out.body(Body::from(body)).expect("response")
}

#[tokio::test]
async fn backs_off_on_429_honouring_retry_after() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/throttled", &["2.0.0"])
        .await
        .expect("push");
    let proxy = Proxy {
        upstream: reg.base_url(),
        throttled: Arc::new(AtomicUsize::new(0)),
        http: reqwest::Client::new(),
    };
    let app = Router::new().fallback(throttle).with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let image = reference::parse(&format!("{addr}/client/throttled")).expect("ref");
    let started = Instant::now();
    let tags = client(100)
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .expect("succeeds after back-off");
    assert_eq!(tags, vec!["2.0.0".to_string()]);
    assert_eq!(
        proxy.throttled.load(Ordering::SeqCst),
        3,
        "two 429s, then the real answer"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After twice"
    );

    // Throttled beyond the retry budget: a RegistryError naming the rate limit.
    proxy.throttled.store(0, Ordering::SeqCst);
    let impatient = Arc::new(
        RegistryClient::new(ClientSettings {
            max_retries: 1,
            ..ClientSettings::default()
        })
        .expect("client"),
    );
    let err = impatient
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .expect_err("still throttled");
    assert!(err.to_string().contains("429"), "{err}");
}

#[tokio::test]
async fn unknown_repository_and_refused_connection_are_clear() {
    let env = common::env();
    let reg = env.plain_registry();
    let c = client(100);
    let missing = reference::parse(&format!("{}/client/nothing-here", reg.host)).expect("ref");
    let err = c
        .list_tags(&missing, None, TlsMode::PlainHttp)
        .await
        .expect_err("404");
    assert!(err.to_string().contains("not found"), "{err}");
    assert_eq!(err.metric_label(), "not_found");
    let down = reference::parse("127.0.0.1:1/x").expect("ref");
    let err = c
        .list_tags(&down, None, TlsMode::PlainHttp)
        .await
        .expect_err("refused");
    assert_eq!(err.metric_label(), "network");
}

/// A client that may send credentials over plain HTTP to `listed` (as `--insecure-registry`).
fn client_listing(listed: &[&str]) -> Arc<RegistryClient> {
    kimup_testenv::install_crypto_provider();
    Arc::new(
        RegistryClient::new(ClientSettings {
            max_retries: 0,
            plain_http: listed.iter().map(|h| h.to_string()).collect(),
            ..ClientSettings::default()
        })
        .expect("client"),
    )
}

/// Registry answers and token realms that carry URLs with `user:SECRET@` and `?token=SECRET`,
/// and a registry echoing the password (SECRET too): no error string shows SECRET.
#[tokio::test]
async fn no_error_shows_a_url_secret_or_the_password() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/scrub", &["1.0.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url()).await.expect("proxy");
    let image = reference::parse(&format!("{}/client/scrub", proxy.host)).expect("ref");
    let c = client_listing(&[&proxy.host]);
    let cred = kimup::registry::Credential {
        username: "user".into(),
        password: "SECRET".into(),
    };
    let secret_url = "https://user:SECRET@elsewhere.example/v2/?token=SECRET";
    let envelope = |code: &str| {
        serde_json::json!({"errors": [{"code": code, "message": format!("see {secret_url}, password SECRET")}]})
            .to_string()
            .into_bytes()
    };
    let tls_host = env.tls_registry().host.clone();
    let cases: Vec<(&str, HttpFault)> =
        vec![
        (
            "realm refusing connections",
            HttpFault::status(401).with_header(
                "www-authenticate",
                r#"Bearer realm="http://user:SECRET@127.0.0.1:1/token?token=SECRET",service="s""#,
            ),
        ),
        (
            "realm with an untrusted certificate",
            HttpFault::status(401).with_header(
                "www-authenticate",
                &format!(r#"Bearer realm="https://user:SECRET@{tls_host}/token?token=SECRET""#),
            ),
        ),
        ("401 body", HttpFault::status(401).with_body(envelope("UNAUTHORIZED"))),
        ("404 body", HttpFault::status(404).with_body(envelope("NAME_UNKNOWN"))),
        ("500 body", HttpFault::status(500).with_body(envelope("UNKNOWN"))),
        (
            "plain 502 body",
            HttpFault::status(502).with_body(format!("upstream {secret_url} SECRET").into_bytes()),
        ),
        (
            "tag list",
            HttpFault::status(200).with_body(
                serde_json::json!({"name": "client/scrub", "tags": secret_url})
                    .to_string()
                    .into_bytes(),
            ),
        ),
    ];
    let mut leaks = Vec::new();
    for (what, fault) in cases {
        proxy.set(FaultPlan::new(fault).on_paths_containing("/tags/list"));
        for credential in [None, Some(&cred)] {
            let err = c
                .list_tags(&image, credential, TlsMode::PlainHttp)
                .await
                .expect_err(what);
            let shown = format!("{err} {err:?}");
            // Anonymous, "password SECRET" in a body is only the registry's text; the URL's
            // secrets must go either way.
            let leaked = match credential {
                Some(_) => shown.contains("SECRET"),
                None => shown.contains("token=SECRET") || shown.contains(":SECRET@"),
            };
            if leaked {
                leaks.push(format!(
                    "{what} (credential: {}): {shown}",
                    credential.is_some()
                ));
            }
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// Requests a hostile registry's Link or realm sent elsewhere: how many, how many carried an
/// Authorization header.
#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<AtomicUsize>,
    authorized: Arc<AtomicUsize>,
}

/// Answers everything with a one-tag list and a token, counting requests and credentials.
async fn record(State(r): State<Recorder>, req: Request) -> Response<Body> {
    r.requests.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("authorization") {
        r.authorized.fetch_add(1, Ordering::SeqCst);
    }
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"name":"x","tags":["9.9.9"],"token":"stolen","access_token":"stolen"}"#,
        ))
        .expect("response")
}

/// A second local listener: where a hostile registry points its Link or token realm.
async fn recorder() -> (Recorder, std::net::SocketAddr) {
    let r = Recorder::default();
    let app = Router::new().fallback(record).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, addr)
}

/// The real registry's tag list with a `Link` to another port (and, relative, another host):
/// not followed, no credential sent there, a RegistryError naming the origin.
#[tokio::test]
async fn a_link_to_another_origin_is_not_followed() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/foreign", &["1.0.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url()).await.expect("proxy");
    let (rec, rec_addr) = recorder().await;
    let image = reference::parse(&format!("{}/client/foreign", proxy.host)).expect("ref");
    let c = client_listing(&[&proxy.host]);
    let cred = kimup::registry::Credential {
        username: "user".into(),
        password: "pw".into(),
    };
    for link in [
        format!("<http://{rec_addr}/v2/client/foreign/tags/list?last=1.0.0>; rel=\"next\""),
        format!("<//{rec_addr}/v2/client/foreign/tags/list?last=1.0.0>; rel=\"next\""),
    ] {
        proxy.set(
            FaultPlan::new(HttpFault::forward_with_header("link", &link))
                .on_paths_containing("/tags/list"),
        );
        let got = c.list_tags(&image, Some(&cred), TlsMode::PlainHttp).await;
        assert_eq!(
            rec.authorized.load(Ordering::SeqCst),
            0,
            "credentials sent to the Link's host ({link}); listing: {got:?}"
        );
        assert_eq!(rec.requests.load(Ordering::SeqCst), 0, "{link}: {got:?}");
        let err = got.expect_err("a foreign Link is refused");
        assert_eq!(err.metric_label(), "foreign_link", "{err}");
        assert!(
            err.to_string().contains(&format!("http://{rec_addr}")),
            "names the origin: {err}"
        );
    }
    // The registry itself was asked, with the credentials it is listed for.
    assert!(proxy.stats().authorized >= 2, "{:?}", proxy.stats());
}

/// Basic credentials over plain HTTP only to a registry the operator listed (as
/// `--insecure-registry`); anonymous listings over HTTP go on working.
#[tokio::test]
async fn credentials_never_go_over_plain_http_to_an_unlisted_registry() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/cleartext", &["1.0.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url()).await.expect("proxy");
    let image = reference::parse(&format!("{}/client/cleartext", proxy.host)).expect("ref");
    let cred = kimup::registry::Credential {
        username: "user".into(),
        password: "pw".into(),
    };
    let unlisted = client_listing(&[]);
    let got = unlisted
        .list_tags(&image, Some(&cred), TlsMode::PlainHttp)
        .await;
    assert_eq!(
        proxy.stats().authorized,
        0,
        "credentials sent in clear text; listing: {got:?}"
    );
    let err = got.expect_err("refused");
    assert_eq!(err.metric_label(), "insecure_credentials", "{err}");
    assert!(err.to_string().contains("--insecure-registry"), "{err}");

    let anonymous = unlisted
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .expect("anonymous over HTTP");
    assert_eq!(anonymous, vec!["1.0.0".to_string()]);
    let listed = client_listing(&[&proxy.host])
        .list_tags(&image, Some(&cred), TlsMode::PlainHttp)
        .await
        .expect("listed by the operator");
    assert_eq!(listed, vec!["1.0.0".to_string()]);
    assert_eq!(proxy.stats().authorized, 1, "{:?}", proxy.stats());
}

/// A Bearer challenge whose realm is plain HTTP on another host: the basic credentials are not
/// sent there (the registry itself is listed); an anonymous token is still fetched.
#[tokio::test]
async fn a_plain_http_token_realm_elsewhere_gets_no_credentials() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/realm", &["1.0.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url()).await.expect("proxy");
    let (rec, rec_addr) = recorder().await;
    let image = reference::parse(&format!("{}/client/realm", proxy.host)).expect("ref");
    let c = client_listing(&[&proxy.host]);
    let cred = kimup::registry::Credential {
        username: "user".into(),
        password: "pw".into(),
    };
    let challenge = || {
        FaultPlan::new(HttpFault::status(401).with_header(
            "www-authenticate",
            &format!(r#"Bearer realm="http://{rec_addr}/token",service="registry""#),
        ))
        .times(1)
        .on_paths_containing("/tags/list")
    };
    proxy.set(challenge());
    let got = c.list_tags(&image, Some(&cred), TlsMode::PlainHttp).await;
    assert_eq!(
        rec.authorized.load(Ordering::SeqCst),
        0,
        "credentials sent to the realm; listing: {got:?}"
    );
    let err = got.expect_err("refused");
    assert_eq!(err.metric_label(), "insecure_credentials", "{err}");
    assert!(
        err.to_string().contains(&format!("http://{rec_addr}")),
        "{err}"
    );

    proxy.set(challenge());
    let anonymous = c
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .expect("anonymous token");
    assert_eq!(anonymous, vec!["1.0.0".to_string()]);
    assert_eq!(
        rec.requests.load(Ordering::SeqCst),
        1,
        "one anonymous token"
    );
    assert_eq!(rec.authorized.load(Ordering::SeqCst), 0);
}

/// Per-registry state is bounded: 2,000 registry hosts named by tenants leave at most 1,000
/// request counters behind (the token and concurrency maps are bounded alike: client.rs tests).
#[tokio::test]
async fn per_registry_state_is_bounded() {
    let c = client(100);
    for i in 0..2000u32 {
        // Loopback addresses with nothing listening on port 1: refused at once.
        let host = format!("127.0.{}.{}:1", i / 250, 1 + i % 250);
        let image = reference::parse(&format!("{host}/x")).expect("ref");
        let _ = c.list_tags(&image, None, TlsMode::PlainHttp).await;
    }
    let counters = c.request_counts().len();
    assert!(counters <= 1000, "{counters} request counters kept");
}

/// The tag cache is bounded by bytes, not entries: 24 repositories of 3 MB tag lists (25,000
/// tags of 120 characters, served by the fault proxy in front of the real registry) leave at
/// most 64 MiB cached.
#[tokio::test]
async fn tag_cache_is_bounded_by_bytes() {
    let env = common::env();
    let proxy = HttpFaultProxy::start(&env.plain_registry().base_url())
        .await
        .expect("proxy");
    let tags: Vec<String> = (0..25_000).map(|i| format!("{i:0>120}")).collect();
    let body = serde_json::json!({"name": "x", "tags": tags}).to_string();
    proxy.set(
        FaultPlan::new(HttpFault::status(200).with_body(body.into_bytes()))
            .on_paths_containing("/tags/list"),
    );
    let cache = TagCache::new(client(1000), Duration::from_secs(600));
    for i in 0..24 {
        let image = reference::parse(&format!("{}/big/repo{i}", proxy.host)).expect("ref");
        let (got, _) = cache
            .tags(&image, None, TlsMode::PlainHttp)
            .await
            .expect("tags");
        assert_eq!(got.len(), 25_000);
    }
    let held = cache.bytes_held().await;
    assert!(held <= 64 * 1024 * 1024, "{held} bytes of tag lists cached");
    assert!(held > 0, "recent lists are cached");
}

/// A registry serving a 5 MB tag page (40,000 tags of 125 characters): the listing fails
/// naming the 4 MiB page limit.
#[tokio::test]
async fn an_oversized_tag_page_fails_naming_the_limit() {
    let env = common::env();
    let proxy = HttpFaultProxy::start(&env.plain_registry().base_url())
        .await
        .expect("proxy");
    let tags: Vec<String> = (0..40_000).map(|i| format!("{i:0>125}")).collect();
    let body = serde_json::json!({"name": "x", "tags": tags}).to_string();
    assert!(body.len() > 5_000_000);
    proxy.set(
        FaultPlan::new(HttpFault::status(200).with_body(body.into_bytes()))
            .on_paths_containing("/tags/list"),
    );
    let image = reference::parse(&format!("{}/big/page", proxy.host)).expect("ref");
    let got = client(1000)
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .map(|t| t.len());
    let err = got.expect_err("page over the limit");
    assert_eq!(err.metric_label(), "tags_limit", "{err}");
    assert!(err.to_string().contains("4 MiB"), "{err}");
    assert_eq!(err.result(), kimup::api::SyncResult::TagsError);
}

/// A registry listing 100,001 tags in one page (1.1 MB): the listing fails naming the limit
/// of 100,000 tags per repository.
#[tokio::test]
async fn too_many_tags_fail_naming_the_limit() {
    let env = common::env();
    let proxy = HttpFaultProxy::start(&env.plain_registry().base_url())
        .await
        .expect("proxy");
    let tags: Vec<String> = (0..100_001).map(|i| format!("t{i}")).collect();
    let body = serde_json::json!({"name": "x", "tags": tags}).to_string();
    proxy.set(
        FaultPlan::new(HttpFault::status(200).with_body(body.into_bytes()))
            .on_paths_containing("/tags/list"),
    );
    let image = reference::parse(&format!("{}/many/tags", proxy.host)).expect("ref");
    let got = client(1000)
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await
        .map(|t| t.len());
    let err = got.expect_err("over the tag limit");
    assert_eq!(err.metric_label(), "tags_limit", "{err}");
    assert!(err.to_string().contains("100000 tags"), "{err}");
}

/// A token realm answering 100 KiB: the token negotiation fails naming the 64 KiB limit.
#[tokio::test]
async fn an_oversized_token_response_fails_naming_the_limit() {
    let env = common::env();
    let reg = env.plain_registry();
    reg.push_tags("client/bigtoken", &["1.0.0"])
        .await
        .expect("push");
    let proxy = HttpFaultProxy::start(&reg.base_url()).await.expect("proxy");
    proxy.set(
        FaultPlan::new(HttpFault::status(401).with_header(
            "www-authenticate",
            &format!(r#"Bearer realm="{}/token",service="registry""#, proxy.url),
        ))
        .times(1)
        .on_paths_containing("/tags/list"),
    );
    let token = serde_json::json!({"token": "a".repeat(100 * 1024)}).to_string();
    proxy.add(
        FaultPlan::new(HttpFault::status(200).with_body(token.into_bytes()))
            .on_paths_containing("/token"),
    );
    let image = reference::parse(&format!("{}/client/bigtoken", proxy.host)).expect("ref");
    let got = client(1000)
        .list_tags(&image, None, TlsMode::PlainHttp)
        .await;
    let err = got.expect_err("token over the limit");
    assert_eq!(err.metric_label(), "response_too_large", "{err}");
    assert!(err.to_string().contains("64 KiB"), "{err}");
}
