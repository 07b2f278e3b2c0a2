//! Building and running the gateway: [`App::build`] opens the store, loads the snapshot,
//! binds the listener (port 0 allowed) and reports the address; [`App::run_until_stopped`]
//! serves until the shutdown future resolves, then drains and stops child processes.

use crate::audit::AuditLog;
use crate::config::Config;
use crate::crypto::{Keys, random_token};
use crate::edge::HostPolicy;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotHandle;
use crate::store::Store;
use crate::upstream::Upstreams;
use crate::{api, console, proxy, scim};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The shared handles every handler gets: one pointer, so the clone axum makes for every
/// request is one reference count (the handles inside are many).
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    pub keys: Keys,
    /// Client sessions opened lately (see [`crate::proxy::session::OpenedSessions`]).
    pub sessions: crate::proxy::session::OpenedSessions,
    pub snapshot: SnapshotHandle,
    pub upstreams: Upstreams,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub hosts: Arc<HostPolicy>,
    /// Legacy HTTP+SSE sessions, which live in this process.
    pub legacy: proxy::legacy::LegacySessions,
    /// Upstream sessions held for clients of the stateless protocol era.
    pub stateless: proxy::stateless::StatelessSessions,
    /// Where the other replicas are (for sessions that live in one of them).
    pub replicas: proxy::forward::ReplicaDirectory,
    /// This process's replica id (random per start).
    pub replica: Arc<str>,
    /// Failed console sign-ins per email and address, and second steps per email.
    pub sign_in_failures: Arc<crate::edge::Counter>,
    /// Failed console sign-ins per email, from any address.
    pub sign_in_accounts: Arc<crate::edge::Counter>,
    /// Networks each email signed in from, exempt from the per-email limit.
    pub sign_in_known: crate::edge::KnownNetworks,
    /// Failed console sign-ins per client address.
    pub sign_in_addresses: Arc<crate::edge::Counter>,
    /// OAuth client registrations per address.
    pub registrations: Arc<crate::edge::Counter>,
    /// When API keys were last used (written in batches).
    pub key_use: Arc<crate::auth::KeyUse>,
    /// Single sign-on through an OpenID Connect provider, when configured.
    pub sso: Option<Arc<crate::auth::oidc::Sso>>,
    /// Client ID Metadata Documents fetched for OAuth clients that identify by URL.
    pub client_documents: Arc<crate::auth::cimd::Documents>,
    /// Records servers' tool lists when they change.
    pub known_tools: crate::known_tools::ToolListWriter,
    /// Pins servers' definitions and holds changed ones (see [`crate::pinning`]).
    pub pins: crate::pinning::PinWriter,
    /// Sends notification mail from the outbox.
    pub mailer: crate::notify::Mailer,
    /// People's tokens for upstream servers with per-user OAuth.
    pub upstream_tokens: Arc<crate::auth::upstream::UpstreamTokens>,
}

impl AppState {
    /// A handle that does not keep the gateway alive (for background tasks).
    pub fn downgrade(&self) -> std::sync::Weak<Shared> {
        Arc::downgrade(&self.0)
    }

    pub fn upgrade(weak: &std::sync::Weak<Shared>) -> Option<AppState> {
        weak.upgrade().map(AppState)
    }
}

/// A built, bound gateway.
pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
    address: SocketAddr,
}

impl App {
    /// Open the store, load the registry and bind the listener.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let keys = config.secret_key()?.derive();
        let store = Store::open(&config.store).await?;
        {
            let mut connection = store.pool.acquire().await?;
            let added = crate::store::catalog::seed(&mut connection, &crate::catalog::starter()).await?;
            if added > 0 {
                tracing::info!(added, "starter catalog entries added");
            }
        }
        let notifications = match &config.store {
            crate::config::StoreLocation::Postgres(url) => Some(url.clone()),
            crate::config::StoreLocation::Sqlite(_) => None,
        };
        let snapshot =
            SnapshotHandle::start(store.clone(), keys.clone(), config.snapshot_max_age, notifications).await?;
        let replica: Arc<str> = Arc::from(random_token(9));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", config.listen))?;
        let address = listener.local_addr()?;
        let audit =
            AuditLog::start(store.clone(), &config.store, keys.clone()).map_err(|problem| anyhow::anyhow!(problem))?;
        let sso = config.oidc.clone().map(|oidc| Arc::new(crate::auth::oidc::Sso::new(oidc, &config.extra_roots)));
        let client_documents = Arc::new(crate::auth::cimd::Documents::new(
            config.oauth_client_metadata_networks.clone(),
            config.extra_roots.clone(),
            config.oauth_redirect_schemes.clone(),
        ));
        let store_for_tools = store.clone();
        let upstream_tokens = Arc::new(crate::auth::upstream::UpstreamTokens::new(
            store.clone(),
            keys.clone(),
            config.extra_roots.clone(),
            config.public_url.clone(),
        ));
        let state = AppState(Arc::new(Shared {
            hosts: Arc::new(HostPolicy::new(config.public_url.as_deref(), &config.allowed_hosts)),
            upstreams: Upstreams::new(
                replica.to_string(),
                config.child_home.clone(),
                &config.extra_roots,
                config.environment_proxy,
                Some(upstream_tokens.clone()),
            ),
            upstream_tokens,
            audit,
            metrics: Metrics::default(),
            legacy: Default::default(),
            replicas: Default::default(),
            stateless: Default::default(),
            sessions: Default::default(),
            config: Arc::new(config),
            store,
            keys,
            snapshot,
            replica,
            sign_in_failures: Arc::new(crate::edge::Counter::new(5, std::time::Duration::from_secs(15 * 60))),
            sign_in_accounts: Arc::new(crate::edge::Counter::new(50, std::time::Duration::from_secs(15 * 60))),
            sign_in_known: crate::edge::KnownNetworks::default(),
            sign_in_addresses: Arc::new(crate::edge::Counter::new(50, std::time::Duration::from_secs(15 * 60))),
            registrations: Arc::new(crate::edge::Counter::new(20, std::time::Duration::from_secs(3600))),
            key_use: Arc::default(),
            sso,
            client_documents,
            known_tools: crate::known_tools::ToolListWriter::start(store_for_tools),
            pins: crate::pinning::PinWriter::default(),
            mailer: crate::notify::Mailer::default(),
        }));
        crate::pinning::PinWriter::start(&state);
        crate::notify::Mailer::start(&state);
        state.key_use.start(state.store.clone());
        // Other replicas reach this one at replica_url, or at the bound address when that is
        // a specific one (set replica_url when replicas run on different hosts).
        let replica_url = state.config.replica_url.clone().unwrap_or_else(|| {
            let host = if address.ip().is_unspecified() { "127.0.0.1".to_owned() } else { address.ip().to_string() };
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            format!("http://{host}:{}", address.port())
        });
        state.replicas.start(state.store.clone(), state.replica.to_string(), replica_url);
        let router = router(state.clone());
        Ok(App { listener, router, state, address })
    }

    /// The address actually bound.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serve until `shutdown` resolves; then stop accepting, drain, flush the audit log and
    /// stop every stdio child.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let App { listener, router, state, .. } = self;
        if let Some(window) = state.config.busy_poll {
            crate::busy_poll::start(window);
        }
        axum::serve(no_delay(listener), router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await?;
        state.audit.flush().await;
        state.key_use.flush(&state.store).await;
        state.upstreams.shutdown().await;
        state.store.close().await;
        Ok(())
    }
}

/// Accept with Nagle's algorithm off: an event stream writes small messages one after the
/// other, and a client's delayed ACK would otherwise hold each second write for up to 40 ms.
pub fn no_delay(listener: TcpListener) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    fn set(stream: &mut tokio::net::TcpStream) {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    }
    listener.tap_io(set)
}

fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/mcp", get(proxy::aggregate::get).post(proxy::aggregate::post).delete(proxy::aggregate::delete))
        .route("/mcp/{server}", get(proxy::get).post(proxy::post).delete(proxy::delete))
        .route("/sse/{server}", get(proxy::legacy::open))
        .route("/sse/{server}/message", axum::routing::post(proxy::legacy::message))
        .nest("/api/v1", api::router())
        .nest("/scim/v2", scim::router(state.clone()))
        .merge(console::router(state.clone()))
        .merge(crate::auth::oauth::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), edge_checks))
        .with_state(state)
}

/// DNS-rebinding protection and the early size check, before any handler runs.
async fn edge_checks(State(state): State<AppState>, request: Request, next: Next) -> Response {
    crate::busy_poll::touch();
    if let Err(reason) = state.hosts.check(request.headers()) {
        tracing::info!(%reason, "request refused at the edge");
        return (StatusCode::FORBIDDEN, reason).into_response();
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > state.config.max_body_bytes) {
        let message = format!("the body is larger than the gateway's limit of {} bytes", state.config.max_body_bytes);
        return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
    }
    next.run(request).await
}

/// Ready when the snapshot is fresh (the store answers).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.snapshot.current() {
        Ok(_) => "ready".into_response(),
        Err(stale) => (StatusCode::SERVICE_UNAVAILABLE, stale.to_string()).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot_ok = f64::from(u8::from(state.snapshot.current().is_ok()));
    let gauges = [
        (
            "portcullis_upstream_links",
            "Open in-process upstream links (stdio processes, SSE streams).",
            state.upstreams.local.len() as f64,
        ),
        ("portcullis_snapshot_fresh", "1 when the policy snapshot is fresh, 0 when stale (denying).", snapshot_ok),
    ];
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&gauges)).into_response()
}
