//! Notification mail in the console: the mail server on the Settings page (super admins), with
//! a test button and the recent outbox, and each IT admin's own "email me alerts" switch on the
//! Inbox page.

use super::html::{Html, esc, facts, link, note, rich_table};
use super::{AppState, cell, csrf, failure, redirect, respond};
use crate::api::ApiError;
use crate::registry::Power;
use crate::store::StoreError;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The Settings page's mail section.
pub async fn section(state: &AppState, csrf: &str) -> Result<Html, StoreError> {
    let mut connection = state.store.pool.acquire().await?;
    let settings = crate::notify::settings(&mut connection).await?;
    let outbox = crate::notify::outbox(&mut connection, 10).await?;
    drop(connection);
    let mut content = Html::new();
    content.push(Html::trusted("<h2>Email notifications</h2>".into()));
    match &settings {
        None => content.push(note("hint", "Not set up: notifications appear only in the in-app inbox.")),
        Some(settings) => content.push(facts(&[
            ("Mail server", format!("{}:{} ({})", settings.host, settings.port, settings.security.as_str())),
            ("Sender", settings.from.clone()),
            ("Username", settings.username.clone().unwrap_or_else(|| "none".into())),
            ("Password", if settings.sealed_password.is_some() { "set (never shown)".into() } else { "none".into() }),
        ])),
    };
    let value = |pick: fn(&crate::notify::MailSettings) -> String| settings.as_ref().map(pick).unwrap_or_default();
    let security = settings.as_ref().map(|settings| settings.security).unwrap_or_default();
    let mut out = format!(
        "<form method=\"post\" action=\"/console/settings/email\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    );
    for (name, label, current, kind) in [
        ("host", "Mail server host", value(|settings| settings.host.clone()), "text"),
        ("port", "Port", value(|settings| settings.port.to_string()), "number"),
        ("from", "Sender address", value(|settings| settings.from.clone()), "email"),
        ("username", "Username (optional)", value(|settings| settings.username.clone().unwrap_or_default()), "text"),
    ] {
        let _ = write!(
            out,
            "<label for=\"mail-{name}\">{label}</label><input id=\"mail-{name}\" name=\"{name}\" type=\"{kind}\" value=\"{}\">",
            esc(&current)
        );
    }
    out.push_str("<label for=\"mail-password\">Password (leave empty to keep the one set)</label><input id=\"mail-password\" name=\"password\" type=\"password\" autocomplete=\"new-password\">");
    out.push_str("<label for=\"mail-security\">Encryption</label><select id=\"mail-security\" name=\"security\">");
    for (option, label) in
        [("starttls", "STARTTLS (port 587)"), ("tls", "TLS (port 465)"), ("none", "None (local relay only)")]
    {
        let selected = if security.as_str() == option { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{option}\"{selected}>{label}</option>");
    }
    out.push_str("</select><button type=\"submit\">Save the mail server</button></form>");
    content.push(Html::trusted(out));
    if settings.is_some() {
        content.push(Html::trusted(format!(
            "<form method=\"post\" action=\"/console/settings/email/test\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label for=\"mail-to\">Send a test message to</label><input id=\"mail-to\" name=\"to\" type=\"email\" required>\
             <button type=\"submit\">Send test message</button></form>",
            esc(csrf)
        )));
    }
    if !outbox.is_empty() {
        let rows: Vec<Vec<Html>> = outbox
            .iter()
            .map(|queued| {
                let status = match (&queued.sent_at, &queued.last_error) {
                    (Some(at), _) => format!("sent {}", crate::time::iso_time(*at)),
                    (None, Some(error)) => format!("not sent after {} attempts: {error}", queued.attempts),
                    (None, None) => "waiting".into(),
                };
                vec![cell(&queued.recipient), cell(&queued.subject), cell(&status)]
            })
            .collect();
        content.push(Html::trusted("<h3>Recent mail</h3>".into()));
        content.push(rich_table(&["To", "Subject", "Status"], &rows));
    }
    Ok(content)
}

/// `POST /console/settings/email`.
pub async fn save(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let signed = match super::require_super_admin_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let port = field("port").trim().parse::<u16>();
    let result = match port {
        Err(_) => Err(ApiError::BadRequest(format!("the port {:?} is not a number from 1 to 65535", field("port")))),
        Ok(port) => {
            let body = crate::api::requests::EmailBody {
                host: field("host"),
                port,
                security: Some(field("security")),
                username: Some(field("username")),
                password: Some(field("password")).filter(|password| !password.is_empty()),
                from: field("from"),
            };
            crate::api::requests::save_email(&state, &signed.account.email, body).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => redirect("/console/settings"),
        Err(error) => super::not_done(
            &state,
            &headers,
            signed,
            "Mail server not saved",
            &error.to_string(),
            ("/console/settings", "Back to the settings"),
        ),
    }
}

/// `POST /console/settings/email/test`: send a test message and say what happened.
pub async fn test(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let signed = match super::require_super_admin_form(&state, &headers, &form).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let text =
        format!("This is a test message from Portcullis, sent by {}. Mail notifications work.", signed.account.email);
    let result = crate::notify::send_now(&state, &field("to"), "Portcullis test message", &text).await;
    let (csrf_token, set) = csrf(&state, &headers);
    let mut content = Html::new();
    match result {
        Ok(()) => content.push(note("ok", &format!("The mail server accepted the test message for {}.", field("to")))),
        Err(error) => content.push(note("error", &format!("The test message was not sent: {error}"))),
    };
    content.push(link("/console/settings", "Back to the settings"));
    respond(signed, &csrf_token, set, "Test message", content)
}

/// The Inbox page's switch for IT admins.
pub async fn preference_form(state: &AppState, user_id: &str, may: bool, csrf: &str) -> Result<Html, StoreError> {
    if !may {
        return Ok(Html::new());
    }
    let mut connection = state.store.pool.acquire().await?;
    let on = crate::notify::alerts_on(&mut connection, user_id).await?;
    let (value, label, status) = if on {
        ("off", "Stop emailing me alerts", "Email alerts are on: new requests and held tool changes are mailed to you.")
    } else {
        ("on", "Email me alerts", "Email alerts are off: new requests and held tool changes appear here only.")
    };
    Ok(Html::trusted(format!(
        "<p class=\"hint\">{}</p><form method=\"post\" action=\"/console/inbox/preferences\" class=\"inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"alerts\" value=\"{value}\">\
         <button type=\"submit\">{label}</button></form>",
        esc(status),
        esc(csrf)
    )))
}

/// `POST /console/inbox/preferences`.
pub async fn preferences(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let refusal = "Email alerts are for the IT admins who review requests.";
    let reviewer = super::with_power(Power::ManageServers);
    let signed = match super::require_form_allowed(&state, &headers, &form, reviewer, refusal).await {
        Ok(signed) => signed,
        Err(response) => return response,
    };
    let value = if field("alerts") == "on" { "true" } else { "false" };
    let saved = async {
        let mut connection = state.store.pool.acquire().await?;
        crate::store::settings::set(&mut connection, &crate::notify::alerts_key(&signed.account.user_id), value).await
    }
    .await;
    match saved {
        Ok(()) => redirect("/console/inbox"),
        Err(error) => failure(&error),
    }
}
