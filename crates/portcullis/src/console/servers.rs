//! The servers registered in Portcullis, for administrators (`/console/servers`): what each
//! one is, how the gateway reaches it (never its secrets: only the names of the headers and
//! environment variables set), and who may use it.

use super::{AppState, Html, cell, csrf, failure, note, require_admin, respond, rich_table};
use crate::registry::Grantee;
use crate::store;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        let servers = store::registry::list_servers(&mut connection).await?;
        let grants = store::registry::list_grants(&mut connection).await?;
        let high_risk = store::requests::high_risk(&mut connection).await?;
        Ok::<_, store::StoreError>((servers, grants, high_risk))
    }
    .await;
    let (mut servers, grants, high_risk) = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failure(&error),
    };
    servers.sort_by(|left, right| left.name.cmp(&right.name));
    let snapshot = state.snapshot.current().ok();
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    if servers.is_empty() {
        content.push(note("hint", "No servers yet. Register them with `portcullis apply` or the REST API."));
    }
    let rows: Vec<Vec<Html>> = servers
        .iter()
        .map(|server| {
            let address = match (&server.url, &server.command) {
                (Some(url), _) => url.clone(),
                (None, Some(command)) => std::iter::once(command.as_str())
                    .chain(server.args.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                (None, None) => String::new(),
            };
            let credentials: Vec<String> = server
                .header_names
                .iter()
                .map(|name| format!("header {name}"))
                .chain(server.env_names.iter().map(|name| format!("env {name}")))
                .collect();
            let mut who: Vec<String> = grants
                .iter()
                .filter(|grant| grant.server == server.name)
                .map(|grant| match grant.grantee {
                    Grantee::User => grant.principal.clone(),
                    Grantee::Group => format!("group {}", grant.principal),
                })
                .collect();
            who.sort();
            if server.public {
                who.insert(0, "everyone (public)".to_owned());
            }
            let credentials = if credentials.is_empty() { "none".to_owned() } else { credentials.join(", ") };
            let pins = snapshot.as_ref().and_then(|snapshot| snapshot.pins.get(&server.name));
            let tools = match pins {
                None => "not pinned yet".to_owned(),
                Some(pins) if pins.held() > 0 => format!("{} held for review", pins.held()),
                Some(pins) => format!("{} pinned", pins.items.len()),
            };
            let risk = match high_risk.iter().find(|entry| entry.server == server.name) {
                Some(entry) => format!("high risk: {}", entry.note),
                None => String::new(),
            };
            vec![
                super::html::link(
                    &format!("/console/servers/{}/permissions", super::url_encode(&server.name)),
                    &server.name,
                ),
                cell(&server.description),
                cell(server.transport.as_str()),
                cell(&address),
                cell(&credentials),
                cell(&who.join(", ")),
                super::html::link(&format!("/console/servers/{}/tools", super::url_encode(&server.name)), &tools),
                cell(&risk),
            ]
        })
        .collect();
    if !rows.is_empty() {
        content.push(rich_table(
            &[
                "Name (permissions)",
                "Description",
                "Transport",
                "Address",
                "Credentials set",
                "Granted to",
                "Definitions",
                "Risk",
            ],
            &rows,
        ));
        content.push(note("hint", "Credentials are stored encrypted and never shown; only their names are listed."));
    }
    respond(signed, &csrf_token, set, "Servers", content)
}
