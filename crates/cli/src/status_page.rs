//! `up`'s federation status page: one page for the whole local federation, served by the
//! `up` process itself on a free loopback port.
//!
//! - `GET /status` (and `/`): the page, one self-contained HTML file
//!   (`assets/federation_status.html`, no external assets) that polls the JSON below
//!   every two seconds.
//! - `GET /v1/federation`: the [`FederationStatus`](crate::fed_status::FederationStatus)
//!   `up`'s status line and `citychain status --dir` print, collected from every node
//!   when asked.
//!
//! The server is the one every node runs (`citychain::http::server`), so its errors carry
//! the same JSON body.

use std::net::TcpListener;

use actix_web::{HttpResponse, web};
use citychain::config::LimitsConfig;
use citychain::http::limits::Limits;
use citychain::http::server::{ServerOptions, serve};
use citychain::http::status_page::html_page;
use citychain_harness::federation::ManifestEntry;

use crate::fed_status;

/// The page itself: HTML, CSS and script in one file.
const FEDERATION_STATUS_HTML: &str = include_str!("../assets/federation_status.html");

/// The file in `up`'s directory that holds the page's URL.
pub(crate) const STATUS_URL_FILE: &str = "status_url";

struct Nodes {
    manifest: Vec<ManifestEntry>,
    http: reqwest::Client,
}

/// A running page server; stops when dropped.
pub(crate) struct StatusServer {
    /// The page's URL (`http://127.0.0.1:PORT/status`).
    pub url: String,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl StatusServer {
    /// Serves the page of the nodes in `manifest` on a free loopback port.
    pub(crate) fn start(manifest: Vec<ManifestEntry>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let nodes = web::Data::new(Nodes {
            manifest,
            http: fed_status::client(),
        });
        let options = ServerOptions {
            workers: 1,
            shutdown_timeout_secs: 1,
            limits: Limits::new(LimitsConfig::default()),
            blocking_threads: Some(1),
        };
        let server = serve(listener, options, move |app| {
            app.app_data(nodes.clone())
                .route("/", web::get().to(page))
                .route("/status", web::get().to(page))
                .route("/v1/federation", web::get().to(federation));
        })?;
        Ok(Self {
            url: format!("http://{addr}/status"),
            handle: server.handle(),
            task: tokio::spawn(server),
        })
    }

    /// Stops serving.
    pub(crate) async fn stop(self) {
        self.handle.stop(true).await;
        let _ = self.task.await;
    }
}

async fn page() -> HttpResponse {
    html_page(FEDERATION_STATUS_HTML)
}

async fn federation(nodes: web::Data<Nodes>) -> HttpResponse {
    let status = fed_status::collect(&nodes.http, &nodes.manifest).await;
    HttpResponse::Ok().json(status)
}
