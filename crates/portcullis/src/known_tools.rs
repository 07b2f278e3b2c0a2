//! What each server offers, as last seen: whenever a complete `tools/list` answer passes
//! through the gateway and differs from the one on record, it is written (off the request
//! path, by one background task) and published with the snapshot. Rule conditions then read a
//! tool's annotations (`meta.tool.annotations.readOnlyHint`, `destructiveHint`, …), and a rule
//! naming a tool the server never listed is saved with a warning (deny rules are often
//! written ahead of time, so it is not refused). The record informs; it never grants.

use crate::store::{self, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// One tool as a server listed it: the parts rules may read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The tool's `annotations` object (hints such as `readOnlyHint`), as listed.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub annotations: Value,
}

/// A server's last known tools, by name.
#[derive(Debug, Clone, Default)]
pub struct ServerTools {
    pub tools: BTreeMap<String, Tool>,
}

impl ServerTools {
    pub fn from_list(tools: Vec<Tool>) -> ServerTools {
        ServerTools { tools: tools.into_iter().map(|tool| (tool.name.clone(), tool)).collect() }
    }

    fn same_as(&self, tools: &[Tool]) -> bool {
        self.tools.len() == tools.len() && tools.iter().all(|tool| self.tools.get(&tool.name) == Some(tool))
    }
}

/// The tools of a complete `tools/list` answer (one without `nextCursor`), each name once;
/// `None` when it is not one.
pub fn from_answer(answer: &Value) -> Option<Vec<Tool>> {
    let result = answer.get("result")?;
    if result.get("nextCursor").is_some_and(|cursor| !cursor.is_null()) {
        return None;
    }
    let mut tools: BTreeMap<String, Tool> = BTreeMap::new();
    for entry in result.get("tools")?.as_array()? {
        let Some(name) = entry.get("name").and_then(Value::as_str) else { continue };
        let title = entry.get("title").and_then(Value::as_str).map(str::to_owned);
        let annotations = entry.get("annotations").filter(|value| value.is_object()).cloned().unwrap_or(Value::Null);
        tools.entry(name.to_owned()).or_insert(Tool { name: name.to_owned(), title, annotations });
    }
    Some(tools.into_values().collect())
}

/// Writes changed tool lists in the background, each at most once per change.
#[derive(Debug)]
pub struct ToolListWriter {
    sender: mpsc::Sender<(String, Vec<Tool>)>,
    /// What was last sent per server, so a burst of identical answers writes once.
    sent: Mutex<HashMap<String, Vec<Tool>>>,
}

impl ToolListWriter {
    /// Start the writer task on `store`.
    pub fn start(store: Store) -> ToolListWriter {
        let (sender, mut receiver) = mpsc::channel::<(String, Vec<Tool>)>(64);
        tokio::spawn(async move {
            while let Some((server, tools)) = receiver.recv().await {
                let written = async {
                    let mut transaction = store.begin_write().await?;
                    store::known_tools::replace_tools(&mut transaction, &server, &tools).await?;
                    transaction.commit().await?;
                    Ok::<_, store::StoreError>(())
                }
                .await;
                match written {
                    Ok(()) => tracing::info!(%server, tools = tools.len(), "the server's tool list changed; recorded"),
                    Err(error) => tracing::warn!(%server, %error, "cannot record the server's tool list"),
                }
            }
        });
        ToolListWriter { sender, sent: Mutex::new(HashMap::new()) }
    }

    /// A complete tool list was seen for `server`; `known` is the one on record.
    pub fn seen(&self, server: &str, known: Option<&ServerTools>, tools: Vec<Tool>) {
        if known.is_some_and(|known| known.same_as(&tools)) {
            return;
        }
        let Ok(mut sent) = self.sent.lock() else { return };
        if sent.get(server) == Some(&tools) {
            return;
        }
        if self.sender.try_send((server.to_owned(), tools.clone())).is_ok() {
            sent.insert(server.to_owned(), tools);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn complete_answers_only_each_name_once() {
        let answer = json!({"result": {"tools": [
            {"name": "query", "annotations": {"readOnlyHint": true}, "inputSchema": {}},
            {"name": "drop", "title": "Drop a table", "annotations": {"destructiveHint": true}},
            {"name": "query", "annotations": {"readOnlyHint": false}},
            {"title": "nameless"}
        ]}});
        let tools = from_answer(&answer).unwrap();
        let names: Vec<&str> = tools.iter().map(|tool| tool.name.as_str()).collect();
        assert_eq!(names, ["drop", "query"]);
        assert_eq!(tools[1].annotations, json!({"readOnlyHint": true}));
        assert_eq!(tools[0].title.as_deref(), Some("Drop a table"));
        assert!(from_answer(&json!({"result": {"tools": [], "nextCursor": "2"}})).is_none(), "a page is not the list");
        assert!(from_answer(&json!({"error": {"code": 1}})).is_none());
        let known = ServerTools::from_list(tools.clone());
        assert!(known.same_as(&tools) && !known.same_as(&tools[..1]));
    }
}
