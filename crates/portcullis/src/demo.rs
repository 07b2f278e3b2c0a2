//! A small MCP server built into the binary: the upstream of `serve --demo` (over stdio, as
//! `portcullis demo-server`) and the fast echo upstream of the benchmark (over Streamable
//! HTTP, as `portcullis echo-upstream`). Both front-ends share [`answer`].

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Answer one JSON-RPC message; `None` for notifications.
pub fn answer(message: &Value) -> Option<Value> {
    let id = message.get("id")?.clone();
    let method = message.get("method").and_then(Value::as_str).unwrap_or("");
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" => {
            let requested = params.get("protocolVersion").and_then(Value::as_str).unwrap_or("2025-06-18");
            let version = mcp::ProtocolVersion::negotiate(requested);
            json!({
                "protocolVersion": version.as_str(),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "portcullis-demo", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "A demo server: echo repeats a message, add sums two numbers."
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": [
            {"name": "echo", "description": "Repeat a message back.",
             "annotations": {"readOnlyHint": true, "openWorldHint": false},
             "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}},
            {"name": "add", "description": "Add two numbers.",
             "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}
        ]}),
        "tools/call" => {
            let arguments = params.get("arguments").cloned().unwrap_or(Value::Null);
            match params.get("name").and_then(Value::as_str) {
                Some("echo") => {
                    let text = arguments.get("message").and_then(Value::as_str).unwrap_or("");
                    json!({"content": [{"type": "text", "text": text}]})
                }
                Some("add") => {
                    let a = arguments.get("a").and_then(Value::as_f64).unwrap_or(0.0);
                    let b = arguments.get("b").and_then(Value::as_f64).unwrap_or(0.0);
                    json!({"content": [{"type": "text", "text": format!("{}", a + b)}]})
                }
                other => {
                    return Some(json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("unknown tool {:?}", other.unwrap_or(""))}}));
                }
            }
        }
        _ => {
            return Some(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("method {method:?} not found")}}));
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// Serve over stdin/stdout until stdin closes.
pub async fn run_stdio() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let Ok(message) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(reply) = answer(&message) {
            let mut bytes = serde_json::to_vec(&reply)?;
            bytes.push(b'\n');
            stdout.write_all(&bytes).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

async fn http_handler(headers: HeaderMap, body: Bytes) -> Response {
    let _ = headers;
    let Ok(message) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    match answer(&message) {
        Some(reply) => ([(header::CONTENT_TYPE, "application/json")], reply.to_string()).into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// Bind a stateless Streamable HTTP echo server on `listen`; returns the bound address and
/// the server future.
pub async fn bind_http(listen: SocketAddr) -> anyhow::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let router = Router::new().route("/mcp", post(http_handler));
    let serve = async move {
        let _ = axum::serve(crate::app::no_delay(listener), router).await;
    };
    Ok((address, serve))
}
