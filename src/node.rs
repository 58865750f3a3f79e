//! Role wiring: what a node of each role starts, and how it stops.
//!
//! - `city`: the actor pipeline under its FailoverSupervisor, the tier chain over the
//!   storage nodes and the local immutable log, and the public API.
//! - `light` / `full`: a redb batch store and the internal storage API, serving only the
//!   nodes on its `[auth]` allow-list.
//! - `continent`: the Merger (city batches into continent batches, on its own immutable
//!   log and index) and the Uplink to the global node, under a supervisor; the signed
//!   endpoint its cities forward to and read endpoints.
//! - `global`: the Collector (continent batches into its log) and the Checkpointer (a
//!   signed checkpoint over the log at an interval), under a supervisor; the signed
//!   endpoint its continents forward to, checkpoints and inclusion proofs.
//! - `representative`: a vote store and the signed proposal endpoint its continent node
//!   calls; it votes at most once per slot (DPoS approval).
//! - A continent with `[dpos]` representatives also runs the Approver under its supervisor.
//! - A city or continent with `[uplink]` keeps an outbox and runs the Uplink actor.
//!
//! Every role serves `/healthz`, `/readyz` and `/metrics`. Shutdown is one call
//! ([`RunningNode::stop`]): the HTTP server stops taking connections and lets in-flight
//! requests finish (so every transaction already in the pipeline is answered), then the
//! actors stop.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use actix_web::dev::ServerHandle;
use actix_web::web;
use anyhow::Context;
use ractor::ActorRef;

use crate::city::actors::uplink::UplinkParts;
use crate::city::msgs::SupervisorMsg;
use crate::city::supervisor::ActorTable;
use crate::config::{Config, Role};
use crate::crypto::SigningKey;
use crate::http::city_api::CityState;
use crate::http::common::{self, ReadinessCheck, UplinkInfo};
use crate::http::federation_api::{self, ContinentState, GlobalState};
use crate::http::limits::{self, Limits};
use crate::http::log_api::{self, LogState};
use crate::http::peer_auth::PeerAuth;
use crate::http::server::{ServerOptions, serve};
use crate::http::storage_api::{self, StorageState};
use crate::messages::auth::RequestSigner;
use crate::storage::chain::TierChain;
use crate::storage::city_store::CityStore;
use crate::storage::continent_store::ContinentStore;
use crate::storage::global_store::GlobalStore;
use crate::storage::immutable_log::ImmutableLog;
use crate::storage::log_notary::{HEAD_INTERVAL, LogNotary, NotaryTask};
use crate::storage::outboxes::{CityOutbox, ContinentOutbox};
use crate::storage::peer::PeerClient;
use crate::storage::store::{self, BatchStore, StoreOptions};
use crate::storage::upstream::{Outbox, UplinkStatus, UpstreamClient};

/// A node that is running; dropping it does not stop it, [`RunningNode::stop`] does.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub role: Role,
    server: ServerHandle,
    server_task: tokio::task::JoinHandle<std::io::Result<()>>,
    supervisor: Option<ActorRef<SupervisorMsg>>,
    /// Notified when the supervisor gives up on the pipeline (city nodes).
    gave_up: Option<(Arc<tokio::sync::Notify>, Arc<ActorTable>)>,
    /// Signs the immutable log's heads (city nodes); a last head when the node stops.
    log_heads: Option<NotaryTask>,
}

impl RunningNode {
    fn without_actors(addr: SocketAddr, role: Role, server: actix_web::dev::Server) -> Self {
        Self {
            addr,
            role,
            server: server.handle(),
            server_task: tokio::spawn(server),
            supervisor: None,
            gave_up: None,
            log_heads: None,
        }
    }

    /// Stops taking requests, finishes the ones in flight, then stops the actors.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.server_task.await;
        if let Some(sup) = self.supervisor {
            let _ = sup.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(heads) = self.log_heads {
            heads.stop().await;
        }
    }

    /// Runs until `shutdown` resolves or the HTTP server ends on its own, then stops.
    pub async fn run_until(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let gave_up = self.gave_up.clone();
        let escalation = async move {
            match gave_up {
                Some((notify, table)) => {
                    notify.notified().await;
                    table.gave_up().unwrap_or_default()
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = escalation => {
                tracing::error!("{why}; stopping the node");
                self.stop().await;
                anyhow::bail!("{why}")
            }
            _ = shutdown => {
                tracing::info!("shutting down");
                self.stop().await;
                Ok(())
            }
            ended = &mut self.server_task => {
                if let Some(sup) = self.supervisor {
                    let _ = sup.stop_and_wait(Some("server ended".into()), None).await;
                }
                if let Some(heads) = self.log_heads {
                    heads.stop().await;
                }
                ended.context("HTTP server task")?.context("HTTP server")?;
                anyhow::bail!("HTTP server stopped unexpectedly")
            }
        }
    }
}

/// Caps glibc's malloc at two arenas. By default glibc gives threads that allocate under
/// contention arenas of their own (up to eight per core) and keeps what they free, so a
/// burst served across the HTTP workers and the blocking pool leaves the resident memory
/// high long after it; two arenas keep it near what is in use (a city after a burst of
/// 15,000 transactions: 139 MiB at the peak instead of 192, 142 MiB ten seconds later
/// instead of 204). Call it before any thread starts; other C libraries are left alone.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Loads the node key, or creates it on first start.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<SigningKey> {
    if path.exists() {
        Ok(SigningKey::load(path)?)
    } else {
        let key = SigningKey::generate()?;
        key.save(path)?;
        tracing::info!(path = %path.display(), address = %key.address(), "created node key");
        Ok(key)
    }
}

/// Starts the node `config` describes and returns once it listens.
pub async fn start(mut config: Config) -> anyhow::Result<RunningNode> {
    std::fs::create_dir_all(&config.node.data_dir)
        .with_context(|| format!("creating data dir {}", config.node.data_dir.display()))?;
    tracing::info!(
        node = %config.node.id,
        role = %config.node.role,
        "effective config:\n{}",
        config.to_toml()
    );
    crate::metrics::handle();
    crate::metrics::spawn_upkeep();
    crate::metrics::register_role(&config);
    let identity = web::Data::new(common::NodeIdentity::of(&config));
    let listener = TcpListener::bind(config.node.listen)
        .with_context(|| format!("binding {}", config.node.listen))?;
    let addr = listener.local_addr()?;
    let open_files = limits::fit_open_files(&mut config.limits);
    limits::set_backlog(&listener, config.limits.listen_backlog)
        .with_context(|| format!("setting the listen backlog of {addr}"))?;
    tracing::info!(
        max_connections = config.limits.max_connections,
        per_peer = config.limits.connections_per_peer(),
        body_budget_bytes = config.limits.body_budget_bytes,
        open_files,
        "limits in force"
    );
    let addr_file = config.node.data_dir.join(LISTEN_ADDR_FILE);
    let _ = std::fs::remove_file(&addr_file);
    let node = match config.node.role {
        Role::City => start_city(config, listener, addr, identity).await,
        Role::Light | Role::Full => start_storage(config, listener, addr, identity),
        Role::Continent => start_continent(config, listener, addr, identity).await,
        Role::Global => start_global(config, listener, addr, identity).await,
        Role::Representative => start_representative(config, listener, addr, identity),
    }?;
    // Written once the node serves, so a launcher that asked for port 0 learns the real one.
    let tmp = addr_file.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, &addr_file)?;
    Ok(node)
}

/// The city's read key, in its data dir (see `city::reads`).
pub const READ_KEY_FILE: &str = "read.key";

/// The file in the data dir where a running node writes the address it listens on.
pub const LISTEN_ADDR_FILE: &str = "listen.addr";

fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(4))
}

async fn start_city(
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    identity: web::Data<common::NodeIdentity>,
) -> anyhow::Result<RunningNode> {
    let config = Arc::new(config);
    let log = Arc::new(ImmutableLog::open(&config.log_dir()).with_context(|| {
        format!(
            "opening the immutable log in {}",
            config.log_dir().display()
        )
    })?);
    // The city's node key signs every request to its storage nodes (which serve only the
    // keys on their allow-lists) and the heads of its log.
    let key = Arc::new(load_or_create_key(&config.node.key_path())?);
    // The first signature seeds AWS-LC's random generator (see `start_storage`): paid here,
    // it stays out of the first batch's requests, which run under the light deadline.
    key.sign(b"citychain city node start")
        .context("signing with the node key")?;
    // The log against the heads this node signed over it, kept apart from the log.
    let (notary, _finding) = LogNotary::open(&config.node.data_dir, log.clone(), key.clone())
        .context("holding the immutable log against its signed heads")?;
    let notary = Arc::new(notary);
    let signer = RequestSigner::new(config.node.id.clone(), key.clone());
    let chain = TierChain::build(&config, PeerClient::new(signer.clone()), log.clone())?;
    // The city's own read key: what opens the batches it sealed when it reads them back.
    let read_key_path = config.node.data_dir.join(READ_KEY_FILE);
    let read_key = Arc::new(
        crate::crypto::vault::ReadKey::load_or_create(&read_key_path)
            .context("loading the city's read key")?,
    );
    let store = Arc::new(
        CityStore::open_bounded(
            &config.node.data_dir,
            config.limits.store_cache_bytes,
            config.uplink.is_some(),
            config.reads.body_cache_bytes,
        )
        .with_context(|| {
            format!(
                "opening the city store in {}",
                config.node.data_dir.display()
            )
        })?,
    );
    // Batches acknowledged on the log that it no longer holds are not `stored` any more:
    // marked lost before the first request, searched for elsewhere by the Repairer.
    crate::storage::log_audit::audit(&store, &log)
        .context("auditing the immutable log against the status index")?;
    let log_heads = notary.spawn(HEAD_INTERVAL);
    let log_state = web::Data::new(LogState {
        log,
        notary,
        store: Some(store.clone()),
    });
    // The link to the continent: certified batch headers from the city store's outbox.
    let uplink = config.uplink.as_ref().map(|u| {
        let outbox: Arc<dyn Outbox> = Arc::new(CityOutbox {
            store: store.clone(),
            client: UpstreamClient::new(signer.clone(), u),
            key: key.clone(),
        });
        uplink_parts(outbox, store.outbox_added(), u)
    });
    let uplink_info = uplink.as_ref().map(uplink_info);
    // The pipeline, Intake → DagBatcher → Flagger → Prioritizer → StorageWriter, with
    // Failover and the Repairer (and the Uplink), each linked to the FailoverSupervisor.
    let index = store.clone();
    let reader = Arc::new(crate::city::reads::Reader::new(
        store.clone(),
        crate::storage::readback::ReadBack::of_chain(&chain),
        read_key.clone(),
        config.reads.clone(),
    ));
    let city = crate::city::start(config.clone(), chain, store, uplink, read_key).await?;
    let (supervisor, actors, gave_up) = (city.supervisor, city.actors, city.gave_up);
    let storage_ready = city.storage_ready;
    let city = web::Data::new(CityState {
        city: city.handle,
        reader,
        max_body_bytes: config.intake.max_body_bytes,
    });
    let ready_actors = actors.clone();
    // Ready while every actor runs, the status index takes writes and some storage tier
    // can make a batch durable.
    let readiness: ReadinessCheck = Arc::new(move || {
        ready_actors.ready()?;
        if let Some(why) = index.failure() {
            return Err(format!("the city store (city.redb) is failing: {why}"));
        }
        storage_ready.check()
    });
    let readiness = web::Data::new(readiness);
    let actors_table = actors.clone();
    let actors = web::Data::new(actors);
    let options = ServerOptions {
        workers: workers(),
        shutdown_timeout_secs: config.intake.request_timeout.as_secs() + 2,
        limits: Limits::new(config.limits.clone()),
        // Signature checks run there: as many threads as cores, no more.
        blocking_threads: Some(workers()),
    };
    let server = serve(listener, options, move |app| {
        app.app_data(city.clone())
            .app_data(readiness.clone())
            .app_data(identity.clone())
            .app_data(actors.clone())
            .app_data(log_state.clone())
            .configure(crate::http::openapi::configure_city)
            .configure(crate::http::status_page::configure);
        if let Some(info) = &uplink_info {
            app.app_data(info.clone());
        }
    })?;
    tracing::info!(%addr, node = %config.node.id, "city node listening");
    Ok(RunningNode {
        gave_up: Some((gave_up, actors_table)),
        addr,
        role: Role::City,
        server: server.handle(),
        server_task: tokio::spawn(server),
        supervisor: Some(supervisor),
        log_heads: Some(log_heads),
    })
}

fn start_storage(
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    identity: web::Data<common::NodeIdentity>,
) -> anyhow::Result<RunningNode> {
    let role = config.node.role;
    let capacity = config.storage.capacity_for(role);
    let options = StoreOptions {
        capacity_bytes: capacity,
        cache_bytes: config.limits.store_cache_bytes,
        retry_initial: config.limits.store_retry_initial,
        retry_max: config.limits.store_retry_max,
        min_free_bytes: config.largest_request_body() as u64,
    };
    let store = BatchStore::open_with(&config.node.data_dir, options).with_context(|| {
        format!(
            "opening the batch store in {}",
            config.node.data_dir.display()
        )
    })?;
    let store = Arc::new(store);
    storage_api::publish_usage(&store);
    metrics::gauge!(crate::metrics::STORE_FAILING).set(if store.failure().is_some() {
        1.0
    } else {
        0.0
    });
    // After a disk or database error the store reopens itself, without waiting for a write.
    store::spawn_recovery(&store);
    let key = load_or_create_key(&config.node.key_path())?;
    // A process's first ML-DSA signature seeds AWS-LC's random generator (signing is
    // hedged with fresh randomness): tens of milliseconds alone, over 200 when a whole
    // federation starts at once on a small machine. Paid here, before the node says where
    // it listens, it stays out of its first ack, which the city awaits under the light
    // tier's deadline (100 ms by default).
    key.sign(b"citychain storage node start")
        .context("signing with the node key")?;
    let state = web::Data::new(StorageState {
        node_id: config.node.id.clone(),
        role,
        continent: config.node.continent.clone(),
        store: store.clone(),
        key: Arc::new(key),
        max_batch_bytes: config.largest_request_body(),
        inflight: AtomicU64::new(0),
    });
    // Not ready while the store is failing: the reason is the disk's or the database's.
    let readiness: ReadinessCheck = Arc::new(move || match store.failure() {
        None => Ok(()),
        Some(why) => Err(format!("the batch store is failing: {why}")),
    });
    let server = serve_internal(
        &config,
        listener,
        state,
        readiness,
        identity,
        storage_api::configure,
    )?;
    tracing::info!(%addr, node = %config.node.id, %role, capacity, "storage node listening");
    Ok(RunningNode::without_actors(addr, role, server))
}

/// A representative: its key, its vote store, and the proposal endpoint its continent
/// node (the peer on its allow-list) calls.
fn start_representative(
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    identity: web::Data<common::NodeIdentity>,
) -> anyhow::Result<RunningNode> {
    let key = Arc::new(load_or_create_key(&config.node.key_path())?);
    // Seeds the random generator before the first vote (see `start_storage`).
    key.sign(b"citychain representative start")
        .context("signing with the node key")?;
    let store = Arc::new(
        crate::storage::dpos_store::DposStore::open(&config.node.data_dir).with_context(|| {
            format!(
                "opening the vote store in {}",
                config.node.data_dir.display()
            )
        })?,
    );
    let continents = config
        .auth
        .peers
        .iter()
        .filter(|p| p.role == Role::Continent)
        .filter_map(|p| {
            Some((
                p.id.clone(),
                crate::config::decode_public_key(&p.public_key)?,
            ))
        })
        .collect();
    let state = web::Data::new(crate::http::dpos_api::RepresentativeState {
        node_id: config.node.id.clone(),
        continent: config.node.continent.clone(),
        key,
        continents,
        store,
    });
    let server = serve_internal(
        &config,
        listener,
        state,
        Arc::new(|| Ok(())),
        identity,
        crate::http::dpos_api::configure_representative,
    )?;
    tracing::info!(%addr, node = %config.node.id, "representative listening");
    Ok(RunningNode::without_actors(
        addr,
        Role::Representative,
        server,
    ))
}

/// The HTTP server of a node that serves only signed internal requests (a storage node, a
/// representative): two workers, its `[auth]` allow-list, its readiness, `routes`, and the
/// routes every role has.
fn serve_internal<S: Send + Sync + 'static>(
    config: &Config,
    listener: TcpListener,
    state: web::Data<S>,
    readiness: ReadinessCheck,
    identity: web::Data<common::NodeIdentity>,
    routes: fn(&mut web::ServiceConfig),
) -> std::io::Result<actix_web::dev::Server> {
    let auth = web::Data::new(PeerAuth::new(config.node.id.clone(), &config.auth));
    let readiness = web::Data::new(readiness);
    let options = ServerOptions {
        workers: 2,
        shutdown_timeout_secs: 5,
        limits: Limits::new(config.limits.clone()),
        blocking_threads: None,
    };
    serve(listener, options, move |app| {
        app.app_data(state.clone())
            .app_data(auth.clone())
            .app_data(readiness.clone())
            .app_data(identity.clone())
            .configure(routes)
            .configure(common::configure);
    })
}

fn uplink_parts(
    outbox: Arc<dyn Outbox>,
    added: Arc<tokio::sync::Notify>,
    config: &crate::config::UplinkConfig,
) -> UplinkParts {
    UplinkParts {
        outbox,
        added,
        status: Arc::new(UplinkStatus::new(config)),
        config: config.clone(),
    }
}

fn uplink_info(parts: &UplinkParts) -> web::Data<UplinkInfo> {
    web::Data::new(UplinkInfo {
        status: parts.status.clone(),
        outbox: parts.outbox.clone(),
    })
}

/// What a continent and the global node both open: the node key (seeded with a first
/// signature, as on a city), the immutable log held against its signed heads, and the
/// notary that signs them.
fn open_level_log(
    config: &Config,
) -> anyhow::Result<(Arc<SigningKey>, Arc<ImmutableLog>, Arc<LogNotary>)> {
    let key = Arc::new(load_or_create_key(&config.node.key_path())?);
    key.sign(b"citychain federation node start")
        .context("signing with the node key")?;
    let log = Arc::new(ImmutableLog::open(&config.log_dir()).with_context(|| {
        format!(
            "opening the immutable log in {}",
            config.log_dir().display()
        )
    })?);
    let (notary, _finding) = LogNotary::open(&config.node.data_dir, log.clone(), key.clone())
        .context("holding the immutable log against its signed heads")?;
    Ok((key, log, Arc::new(notary)))
}

/// Ready while every actor runs and the last write to the log did not fail.
fn level_readiness(
    actors: Arc<ActorTable>,
    health: crate::federation::actors::merger::StoreHealth,
) -> web::Data<ReadinessCheck> {
    let check: ReadinessCheck = Arc::new(move || {
        actors.ready()?;
        match health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            Some(why) => Err(format!("the immutable log's last write failed: {why}")),
            None => Ok(()),
        }
    });
    web::Data::new(check)
}

fn level_options(config: &Config) -> ServerOptions {
    ServerOptions {
        workers: 2,
        shutdown_timeout_secs: 5,
        limits: Limits::new(config.limits.clone()),
        // Signature checks of submissions run there.
        blocking_threads: Some(workers()),
    }
}

async fn start_continent(
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    identity: web::Data<common::NodeIdentity>,
) -> anyhow::Result<RunningNode> {
    let config = Arc::new(config);
    let (key, log, notary) = open_level_log(&config)?;
    let store = Arc::new(
        ContinentStore::open(
            &config.node.data_dir,
            config.limits.store_cache_bytes,
            log.clone(),
        )
        .with_context(|| {
            format!(
                "opening the continent's index in {}",
                config.node.data_dir.display()
            )
        })?,
    );
    let log_heads = notary.spawn(HEAD_INTERVAL);
    let log_state = web::Data::new(LogState {
        log,
        notary,
        store: None,
    });
    // The link to the global node: continent batches from the outbox.
    let signer = RequestSigner::new(config.node.id.clone(), key.clone());
    let uplink = config.uplink.as_ref().map(|u| {
        let outbox: Arc<dyn Outbox> = Arc::new(ContinentOutbox {
            store: store.clone(),
            client: UpstreamClient::new(signer.clone(), u),
        });
        uplink_parts(outbox, store.outbox_added.clone(), u)
    });
    if uplink.is_none() {
        tracing::warn!("no [uplink]: continent batches are kept here and forwarded nowhere");
    }
    let uplink_info = uplink.as_ref().map(uplink_info);
    // DPoS approval: the engine's rules over the store, for the Approver and the routes.
    let dpos = Arc::new(crate::federation::dpos::DposBook::new(
        config.node.continent.clone(),
        &config.dpos,
        store.clone(),
    ));
    if dpos.enabled() {
        dpos.publish_slashed()
            .context("reading the DPoS stake ledger")?;
    }
    // Merger (and Uplink, and Approver) under the supervisor.
    let level = crate::federation::start_continent(
        config.clone(),
        key,
        store.clone(),
        uplink,
        dpos.clone(),
    )
    .await?;
    let dpos_config = web::Data::new(config.dpos.clone());
    let dpos_book = web::Data::new(dpos.clone());
    let state = web::Data::new(ContinentState {
        dpos,
        merger: level.entry.clone(),
        store,
        check: Arc::new(crate::federation::verify::CityBatchCheck::from_config(
            &config,
        )),
    });
    let auth = web::Data::new(PeerAuth::new(config.node.id.clone(), &config.auth));
    let readiness = level_readiness(level.actors.clone(), level.health.clone());
    let actors = web::Data::new(level.actors.clone());
    let server = serve(listener, level_options(&config), move |app| {
        app.app_data(state.clone())
            .app_data(auth.clone())
            .app_data(readiness.clone())
            .app_data(identity.clone())
            .app_data(actors.clone())
            .app_data(log_state.clone())
            .app_data(dpos_config.clone())
            .app_data(dpos_book.clone())
            .configure(federation_api::configure_continent)
            .configure(crate::http::dpos_api::configure_continent)
            .configure(log_api::configure)
            .configure(common::configure)
            .configure(common::configure_actors)
            .configure(common::configure_uplink);
        if let Some(info) = &uplink_info {
            app.app_data(info.clone());
        }
    })?;
    tracing::info!(%addr, node = %config.node.id, "continent node listening");
    Ok(RunningNode {
        gave_up: Some((level.gave_up, level.actors)),
        addr,
        role: Role::Continent,
        server: server.handle(),
        server_task: tokio::spawn(server),
        supervisor: Some(level.supervisor),
        log_heads: Some(log_heads),
    })
}

async fn start_global(
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    identity: web::Data<common::NodeIdentity>,
) -> anyhow::Result<RunningNode> {
    let config = Arc::new(config);
    let (key, log, notary) = open_level_log(&config)?;
    let store = Arc::new(
        GlobalStore::open(
            &config.node.data_dir,
            config.limits.store_cache_bytes,
            log.clone(),
        )
        .with_context(|| {
            format!(
                "opening the global index in {}",
                config.node.data_dir.display()
            )
        })?,
    );
    let log_heads = notary.spawn(HEAD_INTERVAL);
    let log_state = web::Data::new(LogState {
        log,
        notary,
        store: None,
    });
    let public_key = key.public_key().to_vec();
    // Collector and Checkpointer under the supervisor.
    let level = crate::federation::start_global(config.clone(), key, store.clone()).await?;
    let state = web::Data::new(GlobalState {
        collector: level.entry.clone(),
        store,
        check: Arc::new(crate::federation::verify::ContinentBatchCheck::from_config(
            &config,
        )),
        public_key,
    });
    let auth = web::Data::new(PeerAuth::new(config.node.id.clone(), &config.auth));
    let readiness = level_readiness(level.actors.clone(), level.health.clone());
    let actors = web::Data::new(level.actors.clone());
    let server = serve(listener, level_options(&config), move |app| {
        app.app_data(state.clone())
            .app_data(auth.clone())
            .app_data(readiness.clone())
            .app_data(identity.clone())
            .app_data(actors.clone())
            .app_data(log_state.clone())
            .configure(federation_api::configure_global)
            .configure(log_api::configure)
            .configure(common::configure)
            .configure(common::configure_actors)
            .configure(common::configure_uplink);
    })?;
    tracing::info!(%addr, node = %config.node.id, "global node listening");
    Ok(RunningNode {
        gave_up: Some((level.gave_up, level.actors)),
        addr,
        role: Role::Global,
        server: server.handle(),
        server_task: tokio::spawn(server),
        supervisor: Some(level.supervisor),
        log_heads: Some(log_heads),
    })
}
