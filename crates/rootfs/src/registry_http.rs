//! The registry's HTTP API, spoken with every read bounded.
//!
//! A registry is hostile input like an image: every body (manifests,
//! configs, tokens, error texts) is read in chunks against a bound fixed
//! before the first byte, blobs are streamed against their descriptor's
//! size, and credentials go only where they belong: Basic credentials to
//! the registry itself, and to a Bearer challenge's `realm` only when that
//! realm is on the registry's own host and spoken to over TLS (or on
//! loopback, where plain HTTP never leaves the machine). The overall
//! deadline of a pull is the caller's (`registry.rs`).

use std::net::IpAddr;

use crate::auth::Credentials;
use crate::reference::RegistryRef;

/// Most bytes read of an error body (for the message).
const MAX_ERROR_BODY: u64 = 4 << 10;
/// Most bytes read of a token answer.
const MAX_TOKEN_BODY: u64 = 64 << 10;
/// Longest `WWW-Authenticate` header parsed.
const MAX_CHALLENGE: usize = 4 << 10;

/// A failed registry exchange, for a human.
pub(crate) type HttpResult<T> = Result<T, String>;

/// One repository on one registry.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    host: String,
    loopback: bool,
    repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value that last worked (or was obtained).
    authorization: tokio::sync::Mutex<Option<String>>,
}

impl RegistryClient {
    pub(crate) fn new(image: &RegistryRef, credentials: Option<Credentials>) -> HttpResult<Self> {
        let loopback = image.is_loopback();
        let scheme = if loopback { "http" } else { "https" };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| format!("setting up HTTP: {e}"))?;
        Ok(RegistryClient {
            http,
            base: format!("{scheme}://{}", image.registry),
            host: host_of(&image.registry),
            loopback,
            repository: image.repository.clone(),
            credentials,
            authorization: tokio::sync::Mutex::new(None),
        })
    }

    /// A manifest (or index) by tag or digest, at most `max` bytes.
    pub(crate) async fn manifest(
        &self,
        reference: &str,
        accept: &[&str],
        max: u64,
    ) -> HttpResult<Vec<u8>> {
        let path = format!("/v2/{}/manifests/{reference}", self.repository);
        let resp = self.get(&path, Some(&accept.join(", "))).await?;
        read_bounded(resp, max, &format!("manifest {reference}")).await
    }

    /// A blob's response, to stream (the caller bounds it by its size).
    pub(crate) async fn blob(&self, digest: &str) -> HttpResult<reqwest::Response> {
        self.get(&format!("/v2/{}/blobs/{digest}", self.repository), None)
            .await
    }

    /// GET with whatever authorization the registry asks for; one retry
    /// after a challenge.
    async fn get(&self, path: &str, accept: Option<&str>) -> HttpResult<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut answered_challenge = false;
        loop {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                req = req.header(reqwest::header::AUTHORIZATION, auth);
            }
            let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if status == reqwest::StatusCode::UNAUTHORIZED && !answered_challenge {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| v.len() <= MAX_CHALLENGE)
                    .map(str::to_owned);
                if let Some(c) = challenge {
                    let auth = self.answer(&c).await?;
                    *self.authorization.lock().await = Some(auth);
                    answered_challenge = true;
                    continue;
                }
            }
            let body = error_text(resp).await;
            let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
                " (not authorized)"
            } else {
                ""
            };
            return Err(format!("GET {url}: {status}{hint}: {body}"));
        }
    }

    /// The `Authorization` value answering a `WWW-Authenticate` challenge.
    async fn answer(&self, challenge: &str) -> HttpResult<String> {
        let (scheme, params) = parse_challenge(challenge)
            .ok_or_else(|| format!("unreadable WWW-Authenticate challenge {challenge:?}"))?;
        if scheme.eq_ignore_ascii_case("basic") {
            let c = self.credentials.as_ref().ok_or_else(|| {
                "the registry wants credentials (unauthorized), and none are configured".to_owned()
            })?;
            if !self.loopback && !self.base.starts_with("https://") {
                return Err("refusing to send credentials over plain HTTP".into());
            }
            return Ok(basic(c));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(format!("unsupported authentication scheme {scheme:?}"));
        }
        let realm = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("realm"))
            .map(|(_, v)| v.clone())
            .ok_or("Bearer challenge without a realm")?;
        let realm_url =
            reqwest::Url::parse(&realm).map_err(|e| format!("Bearer realm {realm:?}: {e}"))?;
        let mut req = self.http.get(realm_url.clone());
        let mut query = vec![(
            "scope".to_owned(),
            format!("repository:{}:pull", self.repository),
        )];
        if let Some((_, s)) = params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("service"))
        {
            query.push(("service".to_owned(), s.clone()));
        }
        req = req.query(&query);
        match &self.credentials {
            Some(c) if may_send_credentials(&self.host, &realm_url) => {
                req = req.header(reqwest::header::AUTHORIZATION, basic(c));
            }
            Some(_) => tracing::warn!(
                "not sending the credentials for {} to the token realm {realm}: only its own host over TLS (or loopback) gets them",
                self.host
            ),
            None => {}
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("GET token from {realm}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = error_text(resp).await;
            return Err(format!(
                "token from {realm}: {status} (unauthorized?): {body}"
            ));
        }
        let body = read_bounded(resp, MAX_TOKEN_BODY, "token answer").await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token =
            serde_json::from_slice(&body).map_err(|e| format!("token answer from {realm}: {e}"))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| format!("token answer from {realm} holds no token"))?;
        Ok(format!("Bearer {token}"))
    }
}

fn basic(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Whether a registry's credentials may go to a token `realm`: the
/// registry's own host (any port), over TLS, or over plain HTTP on loopback.
pub(crate) fn may_send_credentials(registry_host: &str, realm: &reqwest::Url) -> bool {
    let Some(host) = realm.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !host.eq_ignore_ascii_case(registry_host) {
        return false;
    }
    match realm.scheme() {
        "https" => true,
        "http" => is_loopback(host),
        _ => false,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `host` of `host[:port]` (brackets of an IPv6 address removed).
fn host_of(registry: &str) -> String {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_owned();
    }
    registry.split(':').next().unwrap_or(registry).to_owned()
}

/// `Scheme k="v", k2=v2` -> (scheme, params). Quoted values may hold
/// commas and backslash escapes.
pub(crate) fn parse_challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Some((scheme.to_owned(), params))
}

/// Reads a whole body of at most `max` bytes, refusing it as soon as it
/// grows past (a `Content-Length` above the bound is refused unread).
pub(crate) async fn read_bounded(
    mut resp: reqwest::Response,
    max: u64,
    what: &str,
) -> HttpResult<Vec<u8>> {
    let too_big = || format!("{what} is larger than {max} bytes");
    if resp.content_length().is_some_and(|l| l > max) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("reading {what}: {e}"))?
    {
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The start of an error body, safe to print.
async fn error_text(resp: reqwest::Response) -> String {
    let mut resp = resp;
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = (MAX_ERROR_BODY as usize).saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    vmkit_protocol::terminal_safe_bytes(&body).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_registrys_own_host_over_tls_or_loopback() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(may_send_credentials(
            "ghcr.io",
            &url("https://ghcr.io/token")
        ));
        assert!(may_send_credentials(
            "ghcr.io",
            &url("https://GHCR.io:8443/token")
        ));
        assert!(!may_send_credentials(
            "ghcr.io",
            &url("http://ghcr.io/token")
        ));
        assert!(!may_send_credentials(
            "ghcr.io",
            &url("https://evil.example/token")
        ));
        assert!(!may_send_credentials(
            "ghcr.io",
            &url("https://ghcr.io.evil.example/t")
        ));
        assert!(may_send_credentials(
            "127.0.0.1",
            &url("http://127.0.0.1:5001/token")
        ));
        assert!(!may_send_credentials(
            "127.0.0.1",
            &url("http://127.0.0.2:5001/token")
        ));
        assert!(may_send_credentials("::1", &url("http://[::1]:5001/token")));
        assert!(!may_send_credentials(
            "ghcr.io",
            &url("ftp://ghcr.io/token")
        ));
    }

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg, \"x\"",scope=repository:a:pull"#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[1], ("service".into(), "reg, \"x\"".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a:pull".into()));
        assert_eq!(parse_challenge("Basic").unwrap(), ("Basic".into(), vec![]));
        assert!(parse_challenge(r#"Bearer realm="unterminated"#).is_none());
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("reg:5000"), "reg");
    }
}
