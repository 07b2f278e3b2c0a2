//! The last known tool list of each server (see [`crate::known_tools`]).

use super::registry::bump_revision;
use super::{StoreError, now_ms};
use crate::known_tools::Tool;
use sqlx::{AnyConnection, Row};

/// Every server's last known tools: (server name, tool).
pub async fn list_tools(connection: &mut AnyConnection) -> Result<Vec<(String, Tool)>, StoreError> {
    let rows = sqlx::query("SELECT server, tool FROM server_tools ORDER BY server, name").fetch_all(connection).await?;
    let mut tools = Vec::with_capacity(rows.len());
    for row in &rows {
        let text: String = row.try_get("tool")?;
        // A row that cannot be read is left out: the catalog only informs, it never grants.
        if let Ok(tool) = serde_json::from_str(&text) {
            tools.push((row.try_get("server")?, tool));
        }
    }
    Ok(tools)
}

/// The last known tools of one server.
pub async fn tools_of(connection: &mut AnyConnection, server: &str) -> Result<Vec<Tool>, StoreError> {
    let rows = sqlx::query("SELECT tool FROM server_tools WHERE server = $1 ORDER BY name")
        .bind(server)
        .fetch_all(connection)
        .await?;
    Ok(rows.iter().filter_map(|row| serde_json::from_str(&row.get::<String, _>(0)).ok()).collect())
}

/// Replace the server's tool list.
pub async fn replace_tools(connection: &mut AnyConnection, server: &str, tools: &[Tool]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM server_tools WHERE server = $1").bind(server).execute(&mut *connection).await?;
    let now = now_ms();
    for tool in tools {
        sqlx::query("INSERT INTO server_tools (server, name, tool, seen_at) VALUES ($1, $2, $3, $4)")
            .bind(server)
            .bind(&tool.name)
            .bind(serde_json::to_string(tool).unwrap_or_default())
            .bind(now)
            .execute(&mut *connection)
            .await?;
    }
    bump_revision(connection).await
}
