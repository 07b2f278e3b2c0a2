//! `/console/catalog`: what employees can ask for — the servers already active in the company
//! (with whether they may use them) and the catalog of pre-vetted servers, searchable.

use super::html::{Filter, Html, cell, filters, link, note, rich_table};
use super::{AppState, csrf, failure, require, respond};
use crate::store::{self, StoreError};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct CatalogQuery {
    #[serde(default)]
    q: String,
}

/// Does every word of `query` appear in `text` (case-insensitively)?
fn matches(query: &str, text: &str) -> bool {
    let text = text.to_lowercase();
    query.split_whitespace().all(|word| text.contains(&word.to_lowercase()))
}

pub async fn page(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<CatalogQuery>) -> Response {
    let signed = match require(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let entries = store::catalog::list(&mut connection, false).await?;
        let servers = store::registry::list_servers(&mut connection).await?;
        Ok::<_, StoreError>((entries, servers))
    }
    .await;
    let (entries, mut servers) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&error),
    };
    let usable: Vec<String> = state
        .snapshot
        .current()
        .ok()
        .and_then(|snapshot| {
            let user = snapshot.users.get(&signed.account.user_id)?;
            Some(crate::access::servers_of(&snapshot, user).into_iter().map(str::to_owned).collect())
        })
        .unwrap_or_default();
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    content.push(filters("/console/catalog", &[Filter { name: "q", label: "Search", value: &query.q, options: &[] }]));

    content.push(Html::trusted("<h2>Active in the company</h2>".into()));
    servers.sort_by(|a, b| a.name.cmp(&b.name));
    let active: Vec<Vec<Html>> = servers
        .iter()
        .filter(|server| matches(&query.q, &format!("{} {}", server.name, server.description)))
        .map(|server| {
            let yours = if usable.contains(&server.name) {
                cell("you can use it")
            } else {
                link(
                    &format!("/console/requests/new?kind=access&access_to={}", super::url_encode(&server.name)),
                    "Ask for access",
                )
            };
            vec![cell(&server.name), cell(&server.description), cell(server.transport.as_str()), yours]
        })
        .collect();
    if active.is_empty() {
        content.push(note("hint", "No active server matches."));
    } else {
        content.push(rich_table(&["Server", "What it does", "Transport", "You"], &active));
    }

    content.push(Html::trusted("<h2>Catalog</h2>".into()));
    let offered: Vec<Vec<Html>> = entries
        .iter()
        .map(|stored| &stored.entry)
        .filter(|entry| {
            matches(&query.q, &format!("{} {} {} {}", entry.name, entry.title, entry.description, entry.publisher))
        })
        .map(|entry| {
            let risk = match entry.risk {
                crate::catalog::RiskTier::Low => "low",
                crate::catalog::RiskTier::Medium => "medium",
                crate::catalog::RiskTier::High => "high",
            };
            let auth = match entry.auth {
                crate::catalog::AuthMethod::None => "none",
                crate::catalog::AuthMethod::ApiKey => "API key",
                crate::catalog::AuthMethod::Oauth => "OAuth",
            };
            vec![
                cell(&entry.title),
                cell(&entry.description),
                cell(&entry.publisher),
                cell(auth),
                cell(risk),
                link(
                    &format!("/console/requests/new?kind=catalog&catalog={}", super::url_encode(&entry.name)),
                    "Request",
                ),
            ]
        })
        .collect();
    if offered.is_empty() {
        content.push(note("hint", "No catalog entry matches."));
    } else {
        content.push(rich_table(&["Server", "What it does", "Publisher", "Sign-in", "Risk", ""], &offered));
    }
    respond(signed, &csrf_token, set, "Catalog", content)
}
