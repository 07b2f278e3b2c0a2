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
    let may_change = signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::ManageServers));
    let names: Vec<String> = servers.iter().map(|server| server.name.clone()).collect();
    content.push(high_risk_section(&high_risk, &names, &csrf_token, may_change));
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

/// The high-risk list under the servers: each listed server's reason, last review and when
/// the next quarterly review is due, with Review / Remove, and a form to add one (IT admins).
fn high_risk_section(
    high_risk: &[crate::store::requests::HighRisk],
    servers: &[String],
    csrf: &str,
    may_change: bool,
) -> Html {
    let esc = super::html::esc;
    let now = crate::store::now_ms();
    let mut out = String::from("<h2>High-risk list</h2>");
    if high_risk.is_empty() {
        out.push_str("<p class=\"hint\">No server is on the high-risk list.</p>");
    } else {
        out.push_str("<table><thead><tr><th scope=\"col\">Server</th><th scope=\"col\">Why</th><th scope=\"col\">Last review</th><th scope=\"col\">Next review</th><th scope=\"col\"></th></tr></thead><tbody>");
        for entry in high_risk {
            let due = entry.reviewed_at + crate::api::requests::REVIEW_EVERY_MS;
            let next = if now > due {
                format!("<span class=\"overdue\">overdue since {}</span>", esc(&crate::time::iso_time(due)))
            } else {
                esc(&crate::time::iso_time(due))
            };
            let actions = if may_change {
                let button = |action: &str, label: &str| {
                    format!(
                        "<form method=\"post\" action=\"/console/high-risk/{}/{action}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">{label}</button></form>",
                        esc(&super::url_encode(&entry.server)),
                        esc(csrf)
                    )
                };
                format!("{}{}", button("review", "Record review"), button("remove", "Remove"))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td>{} <span class=\"hint\">({} on {})</span></td><td>{}</td><td>{next}</td><td>{actions}</td></tr>",
                esc(&entry.server),
                esc(&entry.note),
                esc(&entry.marked_by),
                esc(&crate::time::iso_time(entry.marked_at)),
                esc(&crate::time::iso_time(entry.reviewed_at)),
            ));
        }
        out.push_str("</tbody></table>");
    }
    if may_change && !servers.is_empty() {
        out.push_str(&format!(
            "<form method=\"post\" action=\"/console/high-risk\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><label for=\"risk-server\">Add a server</label><select id=\"risk-server\" name=\"server\">",
            esc(csrf)
        ));
        for server in servers {
            out.push_str(&format!("<option>{}</option>", esc(server)));
        }
        out.push_str("</select><label for=\"risk-note\">Why it is high-risk</label><input id=\"risk-note\" name=\"note\" required><button type=\"submit\">Add to the high-risk list</button></form>");
    }
    Html::trusted(out)
}

/// `POST /console/high-risk` (add) and `/console/high-risk/{server}/{review|remove}`.
pub async fn high_risk(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Option<axum::extract::Path<(String, String)>>,
    axum::extract::Form(form): axum::extract::Form<std::collections::BTreeMap<String, String>>,
) -> Response {
    use crate::api::requests::{HighRiskChange, change_high_risk};
    let signed = match super::require_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let (server, change) = match path {
        Some(axum::extract::Path((server, action))) => match action.as_str() {
            "review" => (server, Some(HighRiskChange::Review)),
            "remove" => (server, Some(HighRiskChange::Unmark)),
            _ => (server, None),
        },
        None => (
            form.get("server").cloned().unwrap_or_default(),
            Some(HighRiskChange::Mark(form.get("note").cloned().unwrap_or_default())),
        ),
    };
    let result = match change {
        _ if !signed.account.admin_roles.iter().any(|role| role.can(crate::registry::Power::ManageServers)) => {
            Err("Only IT admins change the high-risk list.".to_owned())
        }
        None => Err("Unknown action.".to_owned()),
        Some(change) => {
            change_high_risk(&state, &signed.account.email, &server, change).await.map_err(|error| error.to_string())
        }
    };
    match result {
        Ok(()) => super::redirect("/console/servers"),
        Err(problem) => super::not_done(
            &state,
            &headers,
            signed,
            "High-risk list not changed",
            &problem,
            ("/console/servers", "Back to the servers"),
        ),
    }
}
