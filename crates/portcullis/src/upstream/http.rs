//! Streamable HTTP upstreams. One pooled client for all servers; the upstream's session id is
//! carried by the caller (sealed in the client's session), so any replica can continue any
//! session.

use super::{Listener, Replies, Reply, UpstreamError, response_id};
use crate::snapshot::ServerEntry;
use bytes::Bytes;
use http_body_util::BodyExt;
use mcp::{Message, ProtocolVersion, sse};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

/// The largest single message accepted from an upstream.
const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Whether the plain-HTTP client can send to `url`: `http://` without user info (user info,
/// turned into Basic authentication, and proxies are reqwest's).
pub fn is_plain(url: &reqwest::Url) -> bool {
    url.scheme() == "http" && url.username().is_empty() && url.password().is_none()
}

/// An upstream's answer body, whichever client fetched it.
pub type AnswerBody = http_body_util::combinators::UnsyncBoxBody<Bytes, String>;

/// The pooled clients: hyper's own for plain `http://` upstreams (the common case inside a
/// company network, and the request path's hot one: reqwest's extra layers parse the URL twice
/// more per request), reqwest with rustls for `https://`.
#[derive(Clone, Debug)]
pub struct HttpUpstream {
    /// Every request goes through reqwest (the environment names a proxy, which it honours).
    proxied: bool,
    client: reqwest::Client,
    plain: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    /// People's tokens for servers with per-user OAuth.
    tokens: Option<std::sync::Arc<crate::auth::upstream::UpstreamTokens>>,
}

impl Default for HttpUpstream {
    fn default() -> Self {
        HttpUpstream::new(&[], false)
    }
}

impl HttpUpstream {
    /// A pooled client that also trusts `roots` (the deployment's `ca_file`); `proxied` when
    /// the environment names an HTTP proxy.
    pub fn new(roots: &[reqwest::Certificate], proxied: bool) -> HttpUpstream {
        let client = crate::config::trusting(reqwest::Client::builder(), roots)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            // Redirects could carry the upstream credentials to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client configuration is valid");
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        HttpUpstream { proxied, client, plain, tokens: None }
    }

    /// Send people's own tokens to servers with per-user OAuth.
    pub fn with_tokens(mut self, tokens: std::sync::Arc<crate::auth::upstream::UpstreamTokens>) -> HttpUpstream {
        self.tokens = Some(tokens);
        self
    }

    /// Add the caller's token for a server with per-user OAuth.
    async fn authorize(&self, entry: &ServerEntry, headers: &mut HeaderMap) -> Result<(), UpstreamError> {
        if entry.server.oauth.is_none() {
            return Ok(());
        }
        let tokens = self
            .tokens
            .as_ref()
            .ok_or_else(|| UpstreamError::Unavailable("per-user OAuth is not available in this process".into()))?;
        let token = tokens.access_token(entry).await?;
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UpstreamError::Invalid("the authorization server issued an unusable token".into()))?;
        headers.insert(axum::http::header::AUTHORIZATION, value);
        Ok(())
    }

    /// Send one request (redirects are never followed: they could carry the upstream's
    /// credentials to another host).
    pub async fn send_request(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<axum::http::Response<AnswerBody>, UpstreamError> {
        if is_plain(&url) && !self.proxied {
            let uri: axum::http::Uri =
                url.as_str().parse().map_err(|_| UpstreamError::Unavailable("the server's URL is not valid".into()))?;
            return self.send_plain(method, uri, headers, body).await;
        }
        let response =
            self.client.request(method, url).headers(headers).body(body).send().await.map_err(describe_send_error)?;
        let response = axum::http::Response::<reqwest::Body>::from(response);
        Ok(response.map(|body| body.map_err(|error| error.to_string()).boxed_unsync()))
    }

    /// Send one request with the plain-HTTP client.
    async fn send_plain(
        &self,
        method: reqwest::Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<axum::http::Response<AnswerBody>, UpstreamError> {
        let mut request = axum::http::Request::new(http_body_util::Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let response = self.plain.request(request).await.map_err(|error| {
            if error.is_connect() {
                UpstreamError::Unavailable("cannot connect to it".into())
            } else {
                UpstreamError::Unavailable("the request failed before an answer arrived".into())
            }
        })?;
        Ok(response.map(|body| body.map_err(|error| error.to_string()).boxed_unsync()))
    }

    /// The pooled client, shared with the SSE transport.
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    fn url(entry: &ServerEntry) -> Result<reqwest::Url, UpstreamError> {
        match (&entry.url, &entry.server.url) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(_)) => Err(UpstreamError::Unavailable("the server's URL is not valid".into())),
            (None, None) => Err(UpstreamError::Unavailable("the server has no URL configured".into())),
        }
    }

    fn headers(entry: &ServerEntry, session: Option<&str>, version: Option<ProtocolVersion>) -> HeaderMap {
        let mut headers = entry.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json, text/event-stream"));
        if let Some(session) = session.and_then(|session| HeaderValue::from_str(session).ok()) {
            headers.insert("mcp-session-id", session);
        }
        if let Some(version) = version {
            headers.insert("mcp-protocol-version", HeaderValue::from_static(version.as_str()));
        }
        headers
    }

    async fn post(
        &self,
        entry: &ServerEntry,
        session: Option<&str>,
        version: Option<ProtocolVersion>,
        message: &Message,
    ) -> Result<axum::http::Response<AnswerBody>, UpstreamError> {
        let mut headers = Self::headers(entry, session, version);
        if let Some(method) = message.method.as_deref().filter(|_| version.is_some_and(ProtocolVersion::is_stateless))
            && let Ok(value) = HeaderValue::from_str(method)
        {
            headers.insert("mcp-method", value);
        }
        let body = Bytes::from(message.to_bytes());
        if entry.server.oauth.is_none()
            && !self.proxied
            && let Some(uri) = &entry.plain_uri
        {
            return self.send_plain(reqwest::Method::POST, uri.clone(), headers, body).await;
        }
        let url = Self::url(entry)?;
        if entry.server.oauth.is_none() {
            return self.send_request(reqwest::Method::POST, url, headers, body).await;
        }
        self.authorize(entry, &mut headers).await?;
        let response = self.send_request(reqwest::Method::POST, url.clone(), headers.clone(), body.clone()).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        // The person's token was refused: refresh it once and try again; refused again, the
        // person must reconnect.
        let Some(tokens) = &self.tokens else { return Ok(response) };
        tokens.refused(entry).await;
        self.authorize(entry, &mut headers).await?;
        let again = self.send_request(reqwest::Method::POST, url, headers, body).await?;
        if again.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(tokens.rejected(entry).await);
        }
        Ok(again)
    }

    /// Send `initialize`; remember the session id the upstream issues.
    pub async fn open(
        &self,
        entry: &ServerEntry,
        initialize: &Message,
    ) -> Result<(super::Attachment, Replies), UpstreamError> {
        let response = self.post(entry, None, None, initialize).await?;
        let session = response.headers().get("mcp-session-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
        let replies = self.replies(response, initialize, session.is_some()).await?;
        Ok((super::Attachment::Http { session }, replies))
    }

    pub async fn request(
        &self,
        entry: &ServerEntry,
        session: Option<&str>,
        version: ProtocolVersion,
        message: &Message,
    ) -> Result<Replies, UpstreamError> {
        let response = self.post(entry, session, Some(version), message).await?;
        self.replies(response, message, session.is_some()).await
    }

    /// Turn an HTTP answer into the stream of messages answering `request`.
    async fn replies(
        &self,
        response: axum::http::Response<AnswerBody>,
        request: &Message,
        has_session: bool,
    ) -> Result<Replies, UpstreamError> {
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND && has_session {
            return Err(UpstreamError::SessionGone);
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("text/event-stream") && status.is_success() {
            let (sender, receiver) = mpsc::channel(32);
            let wanted = request.id.as_ref().map(mcp::Id::to_value);
            tokio::spawn(relay_event_stream(response, wanted, sender));
            return Ok(Replies::stream(receiver));
        }
        let limited = http_body_util::Limited::new(response.into_body(), MAX_MESSAGE_BYTES);
        let body = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(UpstreamError::Invalid("the answer is larger than 32 MiB".into()));
            }
            Err(error) => return Err(UpstreamError::Unavailable(error.to_string())),
        };
        if matches!(status, reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) {
            // The upstream refuses the gateway's credentials (never a client's: those are not sent).
            return Err(UpstreamError::Refused(format!("it answered HTTP {status}")));
        }
        // The common answer: one response, relayed as it came.
        if let Some(response) = super::RawResponse::read(body.clone()) {
            return Ok(Replies::raw(response));
        }
        match serde_json::from_slice::<Value>(&body) {
            // A JSON-RPC answer (even an error with an HTTP error status) is the upstream's own word.
            Ok(value) if response_id(&value).is_some() => Ok(Replies::one(Ok(value))),
            _ if !status.is_success() => Err(UpstreamError::Unavailable(format!("it answered HTTP {status}"))),
            _ => Err(UpstreamError::Invalid(format!(
                "HTTP {status} with content type {content_type:?} and no JSON-RPC response"
            ))),
        }
    }

    /// Send a notification or a response; the upstream answers 202.
    pub async fn send(
        &self,
        entry: &ServerEntry,
        session: Option<&str>,
        version: ProtocolVersion,
        message: &Message,
    ) -> Result<(), UpstreamError> {
        let response = self.post(entry, session, Some(version), message).await?;
        match response.status() {
            status if status.is_success() => Ok(()),
            reqwest::StatusCode::NOT_FOUND if session.is_some() => Err(UpstreamError::SessionGone),
            status => Err(UpstreamError::Unavailable(format!("it answered HTTP {status}"))),
        }
    }

    /// Open the upstream's GET stream.
    pub async fn listen(
        &self,
        entry: &ServerEntry,
        session: Option<&str>,
        version: ProtocolVersion,
    ) -> Result<Listener, UpstreamError> {
        let url = Self::url(entry)?;
        let mut headers = Self::headers(entry, session, Some(version));
        headers.remove(CONTENT_TYPE);
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        self.authorize(entry, &mut headers).await?;
        let response = self.send_request(reqwest::Method::GET, url, headers, Bytes::new()).await?;
        match response.status() {
            status if status.is_success() => {}
            reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                return Err(UpstreamError::NotSupported("the upstream offers no GET stream".into()));
            }
            reqwest::StatusCode::NOT_FOUND if session.is_some() => return Err(UpstreamError::SessionGone),
            status => return Err(UpstreamError::Unavailable(format!("GET stream answered HTTP {status}"))),
        }
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut parser = sse::Parser::new(MAX_MESSAGE_BYTES);
            let mut body = response.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else { continue };
                let Ok(events) = parser.push(&chunk) else { return };
                for event in events {
                    if let Ok(value) = serde_json::from_str::<Value>(&event.data)
                        && sender.send(value).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(receiver)
    }

    /// DELETE the upstream session.
    pub async fn close(&self, entry: &ServerEntry, session: &str, version: ProtocolVersion) {
        let Ok(url) = Self::url(entry) else { return };
        let mut headers = Self::headers(entry, Some(session), Some(version));
        headers.remove(CONTENT_TYPE);
        if self.authorize(entry, &mut headers).await.is_err() {
            return;
        }
        if let Err(error) = self.send_request(reqwest::Method::DELETE, url, headers, Bytes::new()).await {
            tracing::debug!(server = %entry.server.name, ?error, "upstream DELETE failed");
        }
    }
}

/// Relay an SSE answer message by message until the response to `wanted` went through.
async fn relay_event_stream(
    response: axum::http::Response<AnswerBody>,
    wanted: Option<Value>,
    sender: mpsc::Sender<Reply>,
) {
    let mut parser = sse::Parser::new(MAX_MESSAGE_BYTES);
    let mut body = response.into_body();
    loop {
        let chunk: Bytes = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => chunk,
                Err(_) => continue,
            },
            Some(Err(error)) => {
                let _ = sender.send(Err(UpstreamError::Unavailable(format!("the stream broke: {error}")))).await;
                return;
            }
            None => {
                let _ = sender
                    .send(Err(UpstreamError::Invalid("the stream ended before the response arrived".into())))
                    .await;
                return;
            }
        };
        let events = match parser.push(&chunk) {
            Ok(events) => events,
            Err(error) => {
                let _ = sender.send(Err(UpstreamError::Invalid(error.to_string()))).await;
                return;
            }
        };
        for event in events {
            if event.data.is_empty() {
                continue;
            }
            let value = match serde_json::from_str::<Value>(&event.data) {
                Ok(value) if value.is_object() => value,
                _ => {
                    let _ = sender.send(Err(UpstreamError::Invalid("an event is not a JSON-RPC message".into()))).await;
                    return;
                }
            };
            let done = wanted.is_some() && response_id(&value) == wanted.as_ref();
            if sender.send(Ok(value)).await.is_err() || done {
                return;
            }
        }
    }
}

fn describe_send_error(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else if error.is_connect() {
        UpstreamError::Unavailable("cannot connect to it".into())
    } else {
        UpstreamError::Unavailable("the request failed before an answer arrived".into())
    }
}
