//! A city's live status page for operators: `GET /status` (one self-contained HTML page,
//! no external assets) and the JSON it polls, `GET /v1/status` (docs/API.md).
//!
//! `/v1/status` is built from what the node already holds in memory or can count without
//! a scan: the storage nodes' scores the Prioritizer publishes, the supervision tree, the
//! uplink's state, the counts by tier and the recent transactions the Intake records
//! ([`crate::city::activity`]), and the store's record counts. It never renders
//! `/metrics`, so an operator's browser polling it every two seconds costs the city
//! next to nothing.
//!
//! The page inserts every value with `textContent` (never as markup), and is served with a
//! Content-Security-Policy that lets it run only its own inline script and talk only to
//! its own node.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;

use super::ApiResult;
use super::city_api::CityState;
use super::common::{NodeIdentity, ReadinessCheck, UplinkInfo};
use crate::city::activity::{ByTier, RecentTxView};
use crate::city::node_policy::NodeView;
use crate::city::supervisor::{ActorTable, ActorView};
use crate::messages::now_ms;
use crate::storage::upstream::UplinkView;

/// The page itself: HTML and script in one file, its style inlined from
/// [`STATUS_PAGE_CSS`] when served.
pub const CITY_STATUS_HTML: &str = include_str!("status_page.html");

/// The style both status pages share (a city's and `up`'s federation page), inlined into
/// each where the page says [`STYLE_MARKER`], so that either page is one self-contained file.
pub const STATUS_PAGE_CSS: &str = include_str!("status_page.css");

/// Where a status page's HTML takes [`STATUS_PAGE_CSS`].
pub const STYLE_MARKER: &str = "/* status_page.css */";

/// The script helpers both status pages share (building elements as text, tables), inlined
/// where the page's script says [`SCRIPT_MARKER`].
pub const STATUS_PAGE_JS: &str = include_str!("status_page.js");

/// Where a status page's script takes [`STATUS_PAGE_JS`].
pub const SCRIPT_MARKER: &str = "/* status_page.js */";

/// What the status pages may load: their own inline style and script, and requests to the
/// node that served them.
pub const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /status` and `GET /v1/status`. Expects `web::Data<CityState>`,
/// `web::Data<Arc<ActorTable>>`, `web::Data<ReadinessCheck>`, `web::Data<NodeIdentity>`
/// and, with an uplink, `web::Data<UplinkInfo>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/status", web::get().to(page))
        .route("/v1/status", web::get().to(status));
}

/// An HTML answer with the status pages' headers, and the shared style and script inlined.
pub fn html_page(page: &'static str) -> HttpResponse {
    let body =
        page.replacen(STYLE_MARKER, STATUS_PAGE_CSS, 1)
            .replacen(SCRIPT_MARKER, STATUS_PAGE_JS, 1);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, STATUS_PAGE_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body)
}

async fn page() -> HttpResponse {
    html_page(CITY_STATUS_HTML)
}

/// `GET /v1/status`: one city at a glance.
#[derive(Debug, Serialize)]
pub struct StatusReply {
    pub node_id: String,
    pub city: Option<String>,
    pub continent: String,
    /// As `/readyz`: every actor runs, the store takes writes and some tier works.
    pub ready: bool,
    /// Why not, while not ready.
    pub not_ready_reason: Option<String>,
    /// When the node started and the time of this answer (ms since the epoch).
    pub started_ms: u64,
    pub now_ms: u64,
    /// Records in the status index (every transaction and batch the city acknowledged,
    /// also before this start).
    pub stored: StoredCounts,
    /// Acknowledged since the node started, by the tier that made each batch durable.
    pub since_start: SinceStart,
    /// Transactions admitted and not durable yet.
    pub in_flight: usize,
    /// The last transactions acknowledged, newest first (at most 20).
    pub recent: Vec<RecentTxView>,
    /// As `GET /v1/nodes`.
    pub nodes: Vec<NodeView>,
    /// As `GET /v1/uplink`; null for a city without `[uplink]`.
    pub uplink: Option<UplinkView>,
    /// As `GET /v1/actors`.
    pub actors: Vec<ActorView>,
}

#[derive(Debug, Serialize)]
pub struct StoredCounts {
    pub txs: u64,
    pub batches: u64,
}

#[derive(Debug, Serialize)]
pub struct SinceStart {
    pub txs: ByTier,
    pub batches: ByTier,
}

async fn status(
    city: web::Data<CityState>,
    actors: web::Data<Arc<ActorTable>>,
    readiness: web::Data<ReadinessCheck>,
    me: web::Data<NodeIdentity>,
    uplink: Option<web::Data<UplinkInfo>>,
) -> ApiResult<HttpResponse> {
    let handle = &city.city;
    let (txs, batches) = handle.record_counts().map_err(|e| {
        super::ApiError::new(500, "internal", format!("reading the status index: {e}"))
    })?;
    let activity = handle.activity();
    let not_ready_reason = (readiness.get_ref())().err();
    Ok(HttpResponse::Ok().json(StatusReply {
        node_id: me.node_id.clone(),
        city: me.city.clone(),
        continent: me.continent.clone(),
        ready: not_ready_reason.is_none(),
        not_ready_reason,
        started_ms: activity.started_ms,
        now_ms: now_ms(),
        stored: StoredCounts { txs, batches },
        since_start: SinceStart {
            txs: activity.txs,
            batches: activity.batches,
        },
        in_flight: handle.pending(),
        recent: activity.recent,
        nodes: handle.nodes(),
        uplink: uplink.map(|u| u.status.view(u.outbox.waiting())),
        actors: actors.views(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_status_page_is_served_whole_with_the_shared_style_inlined() {
        assert!(CITY_STATUS_HTML.contains(STYLE_MARKER));
        let answer = html_page(CITY_STATUS_HTML);
        let body = actix_web::body::to_bytes(answer.into_body()).await.unwrap();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(!body.contains(STYLE_MARKER), "the marker is replaced");
        assert!(body.contains(STATUS_PAGE_CSS.trim()), "by the whole style");
        assert!(!body.contains(SCRIPT_MARKER), "the script marker too");
        assert!(
            body.contains(STATUS_PAGE_JS.trim()),
            "by the shared helpers"
        );
        assert!(body.contains("<script>"), "and the page keeps its script");
    }
}
