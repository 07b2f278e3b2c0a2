//! Legacy HTTP+SSE upstreams (protocol 2024-11-05): a GET opens an event stream whose first
//! `endpoint` event names the URL to POST messages to; everything the server sends, answers
//! included, arrives on the stream. Routing, id remapping and lifetime are
//! [`super::channel`]'s.

use super::UpstreamError;
use super::channel::{Inbox, Stop};
use crate::snapshot::ServerEntry;
use futures_util::StreamExt;
use mcp::sse;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::mpsc;

const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

fn credentials(entry: &ServerEntry) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &entry.secrets.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            headers.insert(name, value);
        }
    }
    headers
}

/// Resolve the `endpoint` event's URI against the stream's URL. It must stay on the same
/// origin: the server's credentials are sent there.
fn resolve_endpoint(base: &str, endpoint: &str) -> Result<String, UpstreamError> {
    let origin_of = |url: &str| -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let authority = rest.split('/').next()?;
        Some(format!("{scheme}://{authority}"))
    };
    let base_origin = origin_of(base).ok_or_else(|| UpstreamError::Invalid("bad server URL".into()))?;
    let resolved = if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else if endpoint.starts_with('/') {
        format!("{base_origin}{endpoint}")
    } else {
        let directory = base.rsplit_once('/').map_or(base, |(directory, _)| directory);
        format!("{directory}/{endpoint}")
    };
    if origin_of(&resolved).as_deref() != Some(base_origin.as_str()) {
        return Err(UpstreamError::Invalid("the endpoint event names another origin".into()));
    }
    Ok(resolved)
}

/// Open the stream, learn the endpoint, then relay both ways.
pub async fn start(
    entry: &ServerEntry,
    http: &reqwest::Client,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    inbox: Inbox,
) -> Result<Stop, UpstreamError> {
    let url = entry.server.url.clone().ok_or_else(|| UpstreamError::Unavailable("no URL configured".into()))?;
    let headers = credentials(entry);
    let mut stream_headers = headers.clone();
    stream_headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    let response = http.get(&url).headers(stream_headers).send().await.map_err(|error| {
        if error.is_connect() {
            UpstreamError::Unavailable("cannot connect to it".into())
        } else {
            UpstreamError::Unavailable("the event stream could not be opened".into())
        }
    })?;
    if !response.status().is_success() {
        return Err(UpstreamError::Unavailable(format!("the event stream answered HTTP {}", response.status())));
    }
    let mut body = response.bytes_stream();
    let mut parser = sse::Parser::new(MAX_MESSAGE_BYTES);
    let mut early = Vec::new();
    let endpoint = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|_| UpstreamError::Unavailable("the event stream broke".into()))?;
            for event in parser.push(&chunk).map_err(|error| UpstreamError::Invalid(error.to_string()))? {
                if event.event == "endpoint" {
                    return Ok(event.data);
                }
                early.push(event);
            }
        }
        Err(UpstreamError::Invalid("the event stream ended before naming an endpoint".into()))
    })
    .await
    .map_err(|_| UpstreamError::Timeout)??;
    let endpoint = resolve_endpoint(&url, endpoint.trim())?;

    let reader_inbox = inbox.clone();
    let reader = tokio::spawn(async move {
        for event in early {
            if let Ok(value) = serde_json::from_str::<Value>(&event.data) {
                reader_inbox.deliver(value).await;
            }
        }
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            let Ok(events) = parser.push(&chunk) else { break };
            for event in events {
                if !(event.event.is_empty() || event.event == "message") {
                    continue;
                }
                match serde_json::from_str::<Value>(&event.data) {
                    Ok(value) if value.is_object() => {
                        if !reader_inbox.deliver(value).await {
                            return;
                        }
                    }
                    _ => tracing::warn!(server = %reader_inbox.server(), "an event is not JSON-RPC; ignored"),
                }
            }
        }
        reader_inbox.closed("the server's event stream ended").await;
    });
    let writer_http = http.clone();
    let writer_inbox = inbox;
    let writer = tokio::spawn(async move {
        let mut post_headers = headers;
        post_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        while let Some(message) = outgoing.recv().await {
            let sent = writer_http.post(&endpoint).headers(post_headers.clone()).body(message).send().await;
            match sent {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(server = %writer_inbox.server(), status = %response.status(), "the server refused a message");
                    if response.status() == reqwest::StatusCode::NOT_FOUND {
                        writer_inbox.closed("the server no longer knows the session").await;
                        return;
                    }
                }
                Err(_) => {
                    writer_inbox.closed("the server cannot be reached").await;
                    return;
                }
            }
        }
    });
    Ok(Box::new(move || {
        reader.abort();
        writer.abort();
    }))
}

#[cfg(test)]
mod tests {
    use super::resolve_endpoint;

    #[test]
    fn endpoints_stay_on_the_same_origin() {
        let base = "http://127.0.0.1:3002/sse";
        assert_eq!(
            resolve_endpoint(base, "/message?sessionId=1").unwrap(),
            "http://127.0.0.1:3002/message?sessionId=1"
        );
        assert_eq!(resolve_endpoint(base, "message?x=1").unwrap(), "http://127.0.0.1:3002/message?x=1");
        assert_eq!(resolve_endpoint(base, "http://127.0.0.1:3002/m").unwrap(), "http://127.0.0.1:3002/m");
        assert!(resolve_endpoint(base, "http://evil.example.com/steal").is_err());
    }
}
