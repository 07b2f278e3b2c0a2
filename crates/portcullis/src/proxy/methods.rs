//! What each intercepted MCP method means for authorization: which action it is, what it
//! names, and how its answer is filtered so that lists show exactly what the caller may use.

use mcp::{ErrorCode, Message};
use policy::Action;
use serde_json::Value;

/// The authorization question a message asks, in the message's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent<'a> {
    pub action: Action,
    /// Tool name, resource URI or prompt name.
    pub target: Option<&'a str>,
    /// Arguments worth recording (tool and prompt arguments).
    pub arguments: Option<&'a Value>,
}

/// Read the intent of a client request, or say which parameter is missing.
pub fn intent(message: &Message) -> Result<Intent<'_>, (ErrorCode, String)> {
    let method = message.method();
    let required = |key: &str, what: &str| -> Result<&str, (ErrorCode, String)> {
        message
            .param_str(key)
            .ok_or_else(|| (ErrorCode::InvalidParams, format!("{method} needs params.{key} (a string: {what})")))
    };
    let arguments = || message.params().and_then(|params| params.get("arguments"));
    let intent = match method {
        "tools/call" => Intent {
            action: Action::CallTool,
            target: Some(required("name", "the tool to call")?),
            arguments: arguments(),
        },
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Intent { action: Action::ReadResource, target: Some(required("uri", "the resource URI")?), arguments: None }
        }
        "prompts/get" => Intent {
            action: Action::GetPrompt,
            target: Some(required("name", "the prompt name")?),
            arguments: arguments(),
        },
        "completion/complete" => {
            let reference = message.params().and_then(|params| params.get("ref"));
            let kind = reference.and_then(|reference| reference.get("type")).and_then(Value::as_str);
            match kind {
                Some("ref/prompt") => Intent {
                    action: Action::GetPrompt,
                    target: reference.and_then(|reference| reference.get("name")).and_then(Value::as_str),
                    arguments: None,
                },
                Some("ref/resource") => Intent {
                    action: Action::ReadResource,
                    target: reference.and_then(|reference| reference.get("uri")).and_then(Value::as_str),
                    arguments: None,
                },
                _ => {
                    return Err((
                        ErrorCode::InvalidParams,
                        "completion/complete needs params.ref of type ref/prompt or ref/resource".into(),
                    ));
                }
            }
        }
        _ => Intent { action: Action::Connect, target: None, arguments: None },
    };
    Ok(intent)
}

/// Which list a method returns, and under which key its entries are named.
fn list_shape(method: &str) -> Option<(&'static str, &'static str, Action)> {
    match method {
        "tools/list" => Some(("tools", "name", Action::CallTool)),
        "prompts/list" => Some(("prompts", "name", Action::GetPrompt)),
        "resources/list" => Some(("resources", "uri", Action::ReadResource)),
        "resources/templates/list" => Some(("resourceTemplates", "uriTemplate", Action::ReadResource)),
        _ => None,
    }
}

/// Is `method` one whose answer lists tools, prompts, resources or templates?
pub fn is_list(method: &str) -> bool {
    list_shape(method).is_some()
}

/// Remove from a list answer every entry `allowed` refuses. Entries without a name are
/// removed too: what cannot be checked is not shown.
pub fn filter_list(method: &str, response: &mut Value, allowed: impl Fn(Action, &str) -> bool) -> usize {
    let Some((list_key, name_key, action)) = list_shape(method) else { return 0 };
    let Some(entries) =
        response.get_mut("result").and_then(|result| result.get_mut(list_key)).and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let before = entries.len();
    entries.retain(|entry| entry.get(name_key).and_then(Value::as_str).is_some_and(|name| allowed(action, name)));
    before - entries.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: &str) {
        let message = Message::parse(body.as_bytes()).unwrap();
        let actual = match intent(&message) {
            Ok(intent) => format!("{} {:?} {:?}", intent.action.as_str(), intent.target, intent.arguments),
            Err((code, text)) => format!("{} {text}", code.code()),
        };
        assert_eq!(actual, expected);
    }

    #[test]
    fn intents() {
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":1}}}"#,
            r#"call_tool Some("echo") Some(Object {"m": Number(1)})"#,
        );
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            "-32602 tools/call needs params.name (a string: the tool to call)",
        );
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}"#,
            r#"read_resource Some("file:///x") None"#,
        );
        check(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#, "connect None None");
        check(
            r#"{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"p"}}}"#,
            r#"get_prompt Some("p") None"#,
        );
    }
}
