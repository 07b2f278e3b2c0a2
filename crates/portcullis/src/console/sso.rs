//! Signing in to the console through the company's OpenID Connect provider:
//! `GET /auth/oidc/login` sends the browser to the provider, `GET /auth/oidc/callback` brings
//! it back. What the browser must bring back (state, nonce, PKCE verifier) travels sealed in a
//! short-lived cookie, so no server-side state is kept and any replica can finish a sign-in
//! another started. The cookie's path is `/` so that over https it is a `__Host-` cookie: a
//! sibling site cannot plant its own pending sign-in (and with it a login as the attacker).

use super::{
    AppState, Html, NextQuery, audit, base_url, begin_session, clear_cookie, cookie, html_response, note, page,
    redirect, safe_next, set_cookie, with_cookies,
};
use crate::auth::oidc::{Admission, Callback, PENDING_LIFETIME, Pending, SsoError, admit};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

const PENDING_COOKIE: &str = "portcullis_oidc";
const PENDING_PATH: &str = "/";
const PENDING_CONTEXT: &[u8] = b"oidc-pending";

pub fn redirect_uri(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}/auth/oidc/callback", base_url(state, headers))
}

/// A page explaining why single sign-on did not work, with the ways forward.
fn problem(status: StatusCode, message: &str) -> Response {
    let mut content = Html::new();
    content.push(note("error", message));
    content.push(super::html::link("/login", "Back to sign-in"));
    html_response(status, page("Sign-in did not work", None, content))
}

pub async fn start(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<NextQuery>) -> Response {
    let Some(sso) = state.sso.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Single sign-on is not set up on this Portcullis. Sign in with a password.",
        );
    };
    let next = safe_next(query.next.as_deref()).map(str::to_owned);
    match sso.begin(&redirect_uri(&state, &headers), next).await {
        Ok((url, pending)) => {
            let sealed =
                state.keys.console.seal_text(&serde_json::to_vec(&pending).unwrap_or_default(), PENDING_CONTEXT);
            // Lax: the provider brings the browser back with a top-level GET from its own site.
            let cookie = set_cookie(&state, PENDING_COOKIE, &sealed, PENDING_PATH, "Lax", PENDING_LIFETIME);
            with_cookies(redirect(&url), vec![cookie])
        }
        Err(error) => {
            tracing::warn!(detail = error.detail(), "single sign-on could not start");
            problem(StatusCode::BAD_GATEWAY, &error.to_string())
        }
    }
}

pub async fn callback(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<Callback>) -> Response {
    let Some(sso) = state.sso.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "Single sign-on is not set up on this Portcullis. Sign in with a password.",
        );
    };
    // The pending sign-in is good once: the cookie goes whatever happens next.
    let clear = clear_cookie(&state, PENDING_COOKIE, PENDING_PATH);
    let pending = cookie(&state, &headers, PENDING_COOKIE, PENDING_PATH)
        .and_then(|value| state.keys.console.open_text(value, PENDING_CONTEXT).ok())
        .and_then(|bytes| serde_json::from_slice::<Pending>(&bytes).ok());
    let outcome = match &pending {
        Some(pending) => sso.finish(pending, &redirect_uri(&state, &headers), &query).await,
        None => Err(SsoError::Stale("the browser brought no pending sign-in (cookie missing or not ours)".into())),
    };
    let identity = match outcome {
        Ok(identity) => identity,
        Err(error) => {
            tracing::info!(detail = error.detail(), "single sign-on refused");
            audit(
                &state,
                None,
                "single sign-on",
                "console/login",
                false,
                &format!("single sign-on: {}", error.detail()),
            );
            let status = match error {
                SsoError::Provider(_) => StatusCode::BAD_GATEWAY,
                SsoError::Denied(_) => StatusCode::FORBIDDEN,
                SsoError::Stale(_) | SsoError::Invalid(_) => StatusCode::BAD_REQUEST,
            };
            return with_cookies(problem(status, &error.to_string()), vec![clear]);
        }
    };
    let principal = identity.email.clone().unwrap_or_else(|| identity.subject.clone());
    let admission = admit(&state.store, &sso.config, &sso.config.issuer, &identity).await;
    let account = match admission {
        Ok(Admission::Admitted(account)) => account,
        Ok(Admission::Refused { shown, reason }) => {
            audit(&state, None, &principal, "console/login", false, &format!("single sign-on: {reason}"));
            return with_cookies(problem(StatusCode::FORBIDDEN, &shown), vec![clear]);
        }
        Err(error) => return with_cookies(super::failure(&error), vec![clear]),
    };
    // Groups and roles may have changed: rules must see them before the person's next call.
    if let Err(error) = state.snapshot.reload(&state.store, &state.keys).await {
        tracing::warn!(%error, "snapshot reload after a sign-in failed; the refresher will retry");
    }
    let second_done = sso.config.accept_idp_mfa && identity.mfa;
    let next = pending.as_ref().and_then(|pending| safe_next(pending.next.as_deref()));
    let (_, response) = begin_session(&state, &account, second_done, next).await;
    with_cookies(response, vec![clear])
}
