//! The read-only web dashboard (`--dashboard-addr`): every rollout with its phase, step and
//! weight; one rollout's page with charts of the weight and of each gate's measurement against
//! its threshold, the analysis history, the manual commands and the rollout's Events; the page
//! polls the JSON API below.
//!
//! | route | what |
//! |---|---|
//! | `GET /`, `GET /rollouts/{ns}/{name}` | the page (one HTML file; the script picks the view from the path) |
//! | `GET /assets/{app.js,style.css,favicon.svg}` | the script, with its hand-written SVG charts, and the styles |
//! | `GET /api/rollouts` | [`view::RolloutList`] |
//! | `GET /api/rollouts/{ns}/{name}` | [`view::RolloutDetail`] (404 when unknown) |
//!
//! Every asset is compiled into the binary (`include_str!`): no CDN, nothing fetched at run time.
//! Read-only by construction: there is no route that writes, and every method but GET and HEAD
//! is answered 405 before routing. With `--dashboard-token-file`, `/api/` needs
//! `Authorization: Bearer <token>` (compared in constant time; 401 otherwise); the page and its
//! assets hold no data and are served without it, so the page can ask for the token (or take it
//! from the URL fragment `#token=...`, which browsers never send to the server). Without a token
//! the dashboard answers only requests whose `Host` is `localhost` or an IP address, so a web
//! page in the user's browser cannot read it through DNS rebinding.

pub mod source;
pub mod view;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path as FsPath, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use chrono::Utc;
use serde_json::json;
use subtle::ConstantTimeEq;

use self::{
    source::Source,
    view::{DetailInput, Origin},
};
use crate::controller::RolloutCache;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// The operator's dashboard flags (flattened into its command line).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Serve the read-only web dashboard on this address: `PORT` (on 127.0.0.1) or `HOST:PORT`.
    /// Unset: no dashboard.
    #[arg(long = "dashboard-addr", env = "OPERATOR_DASHBOARD_ADDR", value_parser = parse_addr)]
    pub addr: Option<SocketAddr>,
    /// File holding the bearer token the dashboard's API requires (re-read when it changes, e.g.
    /// a mounted Secret). Unset: no authentication, and only localhost/IP Host headers answered.
    #[arg(long = "dashboard-token-file", env = "OPERATOR_DASHBOARD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How often the page polls the API (Go duration).
    #[arg(long = "dashboard-refresh", env = "OPERATOR_DASHBOARD_REFRESH", default_value = "2s",
          value_parser = parse_refresh)]
    pub refresh: Duration,
}

/// `8082` → `127.0.0.1:8082`; `0.0.0.0:8082`, `[::1]:8082` as given.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse()
        .map_err(|e| format!("{e}: expected PORT or HOST:PORT, e.g. 127.0.0.1:8082"))
}

fn parse_refresh(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

/// The bearer token, from a file, re-read when the file's modification time or size changes.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(SystemTime, u64, Vec<u8>)>>,
}

impl TokenFile {
    /// Reads the file once, so a missing or empty file fails startup.
    pub fn open(path: &FsPath) -> Result<Self, String> {
        let t = Self {
            path: path.to_path_buf(),
            cached: Mutex::new(None),
        };
        t.current()?;
        Ok(t)
    }

    fn current(&self) -> Result<Vec<u8>, String> {
        let what = |e: std::io::Error| format!("dashboard token file {}: {e}", self.path.display());
        let meta = std::fs::metadata(&self.path).map_err(what)?;
        let stamp = (meta.modified().map_err(what)?, meta.len());
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((m, l, token)) = cached.as_ref() {
            if (*m, *l) == stamp {
                return Ok(token.clone());
            }
        }
        let text = std::fs::read_to_string(&self.path).map_err(what)?;
        let token = text.trim().as_bytes().to_vec();
        if token.is_empty() {
            return Err(format!(
                "dashboard token file {} is empty",
                self.path.display()
            ));
        }
        *cached = Some((stamp.0, stamp.1, token.clone()));
        Ok(token)
    }
}

/// Everything a request needs.
pub struct App {
    source: Source,
    token: Option<TokenFile>,
    refresh: Duration,
}

impl App {
    pub fn new(source: Source, token: Option<TokenFile>, refresh: Duration) -> Self {
        Self {
            source,
            token,
            refresh,
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/rollouts/{namespace}/{name}", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/rollouts", get(api_list))
        .route("/api/rollouts/{namespace}/{name}", get(api_detail))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Starts the dashboard when `--dashboard-addr` is set: binds first (a taken port fails startup),
/// then serves in the background.
pub async fn start(
    args: &Args,
    client: kube::Client,
    namespace: Option<String>,
    cache: RolloutCache,
) -> anyhow::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let Some(addr) = args.addr else {
        return Ok(None);
    };
    let token = match &args.token_file {
        Some(path) => Some(TokenFile::open(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let authenticated = token.is_some();
    let app = Arc::new(App::new(
        Source::new(client, namespace, cache),
        token,
        args.refresh,
    ));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the dashboard address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    if !authenticated && !bound.ip().is_loopback() {
        tracing::warn!(%bound, "the dashboard is reachable beyond this host without a token (--dashboard-token-file)");
    }
    tracing::info!(%bound, authenticated, "serving the read-only dashboard");
    let serve = axum::serve(listener, router(app));
    Ok(Some(tokio::spawn(async move { serve.await })))
}

/// Method, host and token checks, and the security headers on every answer.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let mut response = match check(&app, &req) {
        Some(refused) => refused,
        None => next.run(req).await,
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn check(app: &App, req: &Request) -> Option<Response> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "GET, HEAD")],
                "the dashboard is read-only: GET and HEAD only\n",
            )
                .into_response(),
        );
    }
    let Some(token) = &app.token else {
        if !local_host(req.headers()) {
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    "without a token (--dashboard-token-file) the dashboard answers only to \
                     localhost or an IP address in the Host header\n",
                )
                    .into_response(),
            );
        }
        return None;
    };
    if !req.uri().path().starts_with("/api/") {
        return None;
    }
    let expected = match token.current() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("{e}");
            return Some(
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "the dashboard cannot read its token file"})),
                )
                    .into_response(),
            );
        }
    };
    if bearer(req.headers()).is_some_and(|given| bool::from(given.ct_eq(&expected))) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Bearer realm=\"embedding-rollout-dashboard\"",
            )],
            Json(json!({"error": "a bearer token is required"})),
        )
            .into_response(),
    )
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// `localhost`, `*.localhost`, or an IP literal, with or without a port; no Host header at all
/// (HTTP/1.0) too.
fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let name = name.to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<Ipv4Addr>().is_ok()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let (content_type, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        "favicon.svg" => ("image/svg+xml", FAVICON_SVG),
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn api_error(status: StatusCode, message: String) -> Response {
    no_store((status, Json(json!({ "error": message }))).into_response())
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn api_list(State(app): State<Arc<App>>) -> Response {
    match app.source.rollouts().await {
        Ok((rollouts, origin)) => no_store(
            Json(view::list(
                &rollouts,
                origin,
                app.source.namespace().map(str::to_string),
                app.refresh.as_secs(),
                Utc::now(),
            ))
            .into_response(),
        ),
        Err(e) => api_error(
            StatusCode::BAD_GATEWAY,
            format!("reading EmbeddingRollouts from the API server: {e}"),
        ),
    }
}

async fn api_detail(
    State(app): State<Arc<App>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let (rollout, origin): (_, Origin) = match app.source.rollout(&namespace, &name).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!("no EmbeddingRollout {namespace}/{name}"),
            )
        }
        Err(e) => {
            return api_error(
                StatusCode::BAD_GATEWAY,
                format!("reading EmbeddingRollout {namespace}/{name} from the API server: {e}"),
            )
        }
    };
    let events = app
        .source
        .events(&rollout)
        .await
        .map_err(|e| format!("reading the rollout's Events: {e}"));
    no_store(
        Json(view::detail(DetailInput {
            rollout: &rollout,
            origin,
            events,
            refresh_seconds: app.refresh.as_secs(),
            now: Utc::now(),
        }))
        .into_response(),
    )
}

#[cfg(test)]
mod tests;
