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
                Html::trusted(format!(
                    "{} <a href=\"/console/servers/{}/credentials\">Rotate</a>",
                    super::html::esc(&credentials),
                    super::html::esc(&super::url_encode(&server.name))
                )),
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

/// `GET /console/servers/{name}/credentials`: rotate a server's credentials in place (IT
/// admins). Values are never shown; an empty field keeps the current one.
pub async fn credentials_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let signed = match require_admin(&state, &headers).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let loaded = async {
        let mut connection = state.store.pool.acquire().await?;
        store::registry::get_server(&mut connection, &name).await
    }
    .await;
    let server = match loaded {
        Ok(server) => server,
        Err(error) => return failure(&error),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let Some(server) = server else {
        return respond(
            signed,
            &csrf_token,
            set,
            "No such server",
            note("error", &format!("No server is named {name:?}.")),
        );
    };
    let esc = super::html::esc;
    let mut out = format!(
        "<form method=\"post\" action=\"/console/servers/{}/credentials\" class=\"wide\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&super::url_encode(&server.name)),
        esc(&csrf_token)
    );
    let mut fields = |kind: &str, names: &[String]| {
        for credential in names {
            let field = format!("{kind}:{credential}");
            out.push_str(&format!(
                "<label for=\"{0}\">{1} {2} (new value; empty keeps it)</label><input id=\"{0}\" name=\"{0}\" type=\"password\" autocomplete=\"off\">\
                 <label class=\"check\"><input type=\"checkbox\" name=\"remove:{0}\" value=\"on\"> remove {2}</label>",
                esc(&field),
                if kind == "env" { "Environment variable" } else { "Header" },
                esc(credential)
            ));
        }
    };
    fields("env", &server.env_names);
    fields("header", &server.header_names);
    out.push_str(
        "<label for=\"add_env\">Add environment variables (NAME=value per line)</label><textarea id=\"add_env\" name=\"add_env\" rows=\"2\"></textarea>\
         <label for=\"add_headers\">Add headers (Name: value per line)</label><textarea id=\"add_headers\" name=\"add_headers\" rows=\"2\"></textarea>",
    );
    if server.oauth.as_ref().is_some_and(|oauth| oauth.client_id.is_some()) {
        out.push_str("<label for=\"oauth_client_secret\">OAuth client secret (new value; empty keeps it)</label><input id=\"oauth_client_secret\" name=\"oauth_client_secret\" type=\"password\" autocomplete=\"off\">");
    }
    out.push_str("<button type=\"submit\">Rotate</button></form>");
    let mut content = Html::new();
    content.push(note(
        "hint",
        "New values take effect for HTTP servers at the next request; running stdio processes keep the old ones until \
         they end, and new sessions start with the new ones. Keep the old credential valid upstream until then.",
    ));
    content.push(Html::trusted(out));
    respond(signed, &csrf_token, set, &format!("Credentials of {}", server.name), content)
}

/// `POST /console/servers/{name}/credentials`.
pub async fn rotate(
    State(state): State<AppState>,
    headers: HeaderMap,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Form(form): axum::extract::Form<std::collections::BTreeMap<String, String>>,
) -> Response {
    let signed = match super::require_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let mut body = crate::api::requests::CredentialsBody::default();
    let mut problem = None;
    for (key, value) in &form {
        let (target, credential) = match key.split_once(':') {
            Some(("env", credential)) => (&mut body.env, credential),
            Some(("header", credential)) => (&mut body.headers, credential),
            _ => continue,
        };
        if form.contains_key(&format!("remove:{key}")) {
            target.insert(credential.to_owned(), None);
        } else if !value.is_empty() {
            target.insert(credential.to_owned(), Some(value.clone()));
        }
    }
    for (field, separator, target) in [("add_env", '=', &mut body.env), ("add_headers", ':', &mut body.headers)] {
        for line in
            form.get(field).map(String::as_str).unwrap_or("").lines().map(str::trim).filter(|line| !line.is_empty())
        {
            match line.split_once(separator) {
                Some((key, value)) => {
                    target.insert(key.trim().to_owned(), Some(value.trim().to_owned()));
                }
                None => problem = Some(format!("{line:?} is not NAME{separator}value")),
            }
        }
    }
    if let Some(secret) = form.get("oauth_client_secret").filter(|secret| !secret.is_empty()) {
        body.oauth_client_secret = Some(Some(secret.clone()));
    }
    if !signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::ManageServers)) {
        problem = Some("Only IT admins rotate server credentials.".into());
    }
    let result = match problem {
        Some(problem) => Err(problem),
        None => crate::api::requests::rotate_credentials(&state, &signed.account.email, &name, body)
            .await
            .map_err(|error| error.to_string()),
    };
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    match result {
        Ok(changed) => content.push(note("ok", &format!("Rotated: {}.", changed.join(", ")))),
        Err(problem) => content.push(note("error", &problem)),
    };
    content.push(super::html::link("/console/servers", "Back to the servers"));
    respond(signed, &csrf_token, set, &format!("Credentials of {name}"), content)
}
