//! Wiring: open the store, sync configuration into it, start the stages, shut down in reverse.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use xueliang_core::config::{self, Config};
use xueliang_core::shutdown::Shutdown;
use xueliang_core::{Clock, EntityId, Error, ErrorKind, ResultExt, SystemClock};
use xueliang_store::{
    ActorKind, ApiToken, AuditEntry, CameraUpsert, DeviceUpsert, OpenOptions, Store,
};

/// Knobs for embedding the service (tests, demo).
#[derive(Default)]
pub struct RunOptions {
    /// Use this shutdown handle instead of installing signal handlers.
    pub shutdown: Option<Shutdown>,
    /// Called with the bound API address once the service is ready.
    pub on_ready: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("shutdown", &self.shutdown)
            .field("on_ready", &self.on_ready.is_some())
            .finish()
    }
}

fn prepare_dirs(cfg: &Config) -> Result<(), Error> {
    for dir in [cfg.node.data_dir.clone(), cfg.recordings_dir()] {
        std::fs::create_dir_all(&dir).err_kind(ErrorKind::Unavailable, || {
            format!("cannot create directory {}", dir.display())
        })?;
    }
    Ok(())
}

pub(crate) async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, Error> {
    let opts = OpenOptions::from_config(cfg);
    let store = xueliang_store::open(&opts, cfg.node_id()).await?;
    let applied = store.migrate().await?;
    let version = store.schema_version().await?;
    tracing::info!(backend = store.backend().as_str(), schema = version, applied = ?applied, "database ready");
    Ok(store)
}

/// `xueliang migrate`: bring the schema up to date and exit.
pub async fn migrate_only(cfg: &Config) -> Result<(), Error> {
    prepare_dirs(cfg)?;
    let store = open_store(cfg).await?;
    store.close().await;
    Ok(())
}

/// `xueliang fsck`: compares recordings on disk with the index and reports (or repairs).
#[allow(clippy::print_stdout)]
pub async fn fsck(cfg: &Config, repair: bool) -> Result<bool, Error> {
    let store = open_store(cfg).await?;
    sync_config(store.as_ref(), cfg, &SystemClock).await?;
    let cams: Vec<String> = cfg.cameras.iter().map(|c| c.id.clone()).collect();
    let report = xueliang_record::reconcile::reconcile(
        store.as_ref(),
        &cfg.recordings_dir(),
        &cams,
        &cfg.node.id,
        SystemClock.now(),
        repair,
    )
    .await?;
    store.close().await;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| Error::with_source(
            ErrorKind::Internal,
            "report",
            e
        ))?
    );
    Ok(report.is_clean())
}

/// Makes the store's view of cameras, devices and tokens match the configuration.
async fn sync_config(store: &dyn Store, cfg: &Config, clock: &dyn Clock) -> Result<(), Error> {
    let now = clock.now();
    let cams: Vec<_> = cfg
        .cameras
        .iter()
        .map(|c| CameraUpsert {
            id: c.id.clone(),
            name: c.name.clone(),
        })
        .collect();
    store.sync_cameras(&cams, now).await?;
    let devs: Vec<_> = cfg
        .devices
        .iter()
        .map(|d| DeviceUpsert {
            id: d.id.clone(),
            name: d.name.clone(),
            lat: d.location.map(|l| l.lat),
            lon: d.location.map(|l| l.lon),
            cameras: d.cameras.clone(),
        })
        .collect();
    store.sync_devices(&devs, now).await?;
    let tokens: Vec<_> = cfg
        .api
        .tokens
        .iter()
        .filter_map(|t| {
            Some(ApiToken {
                name: t.name.clone(),
                token_sha256: xueliang_store::hash_token(t.token.as_ref()?.expose()),
                role: t.role,
                cameras: t.cameras.clone(),
                devices: t.devices.clone(),
                last_used: None,
            })
        })
        .collect();
    store.sync_api_tokens(&tokens, now).await?;
    Ok(())
}

fn build_info(registry: &prometheus::Registry) -> Result<(), Error> {
    let g = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("xueliang_build_info", "Always 1; labels carry the version"),
        &["version"],
    )
    .err_kind(ErrorKind::Internal, || "define build info".into())?;
    g.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry
        .register(Box::new(g))
        .err_kind(ErrorKind::Internal, || "register build info".into())
}

/// `xueliang run`: serve until a signal (or `opts.shutdown`), then stop within the deadline.
pub async fn run(cfg: Arc<Config>, opts: RunOptions) -> Result<(), Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    for w in cfg.warnings() {
        tracing::warn!(warning = %w, "configuration");
    }
    let shutdown = match opts.shutdown {
        Some(s) => s,
        None => {
            let s = Shutdown::new();
            crate::signals::spawn(s.clone())?;
            s
        }
    };
    prepare_dirs(&cfg)?;
    let registry = prometheus::Registry::new();
    build_info(&registry)?;

    let store = open_store(&cfg).await?;
    sync_config(store.as_ref(), &cfg, clock.as_ref()).await?;
    audit_start(store.as_ref(), &cfg, clock.as_ref()).await?;

    let addr = cfg
        .api
        .listen_addr()
        .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "api.listen is not an address"))?;
    let listener = xueliang_api::bind(addr).await?;
    let bound = listener
        .local_addr()
        .err_kind(ErrorKind::Internal, || "read bound address".into())?;
    let (camera_tx, camera_rx) = tokio::sync::mpsc::unbounded_channel();
    let (motion_tx, motion_rx) = tokio::sync::mpsc::unbounded_channel();
    let pipeline = crate::pipeline::start(
        &cfg,
        store.clone(),
        &registry,
        clock.clone(),
        &shutdown,
        camera_tx,
        motion_tx,
    )
    .await?;
    let mut state =
        xueliang_api::AppState::new(cfg.clone(), store.clone(), registry.clone(), clock.clone())?;
    state.shutdown = shutdown.clone();
    let bridge = crate::bridge::start(
        &cfg,
        store.clone(),
        &registry,
        clock.clone(),
        pipeline.health.clone(),
        &shutdown,
    )
    .await?;
    let alarms = crate::alarms::start(
        &cfg,
        store.clone(),
        &registry,
        clock.clone(),
        &shutdown,
        crate::alarms::Wiring {
            events: state.events.clone(),
            cameras: camera_rx,
            motion: motion_rx,
            boost: pipeline.motion_booster(),
            outbound: bridge.outbound.clone(),
        },
    )?;
    state.health = pipeline.health.clone();
    state.desk = alarms.as_ref().map(|a| a.desk.clone());
    state.storage = pipeline.storage.clone();
    state.live = pipeline.live.clone();
    let api = match &cfg.api.tls {
        None => tokio::spawn(xueliang_api::serve(listener, state, shutdown.clone())),
        Some(tls) => {
            let acceptor = tls_acceptor(tls)?;
            tracing::info!(cert = %tls.cert_file.display(), "api serves HTTPS");
            tokio::spawn(serve_tls(listener, acceptor, state, shutdown.clone()))
        }
    };
    tracing::info!(tls = cfg.api.tls.is_some(), addr = %bound, node = %cfg.node.id, cameras = cfg.cameras.len(), devices = cfg.devices.len(), "api listening");
    if let Some(f) = opts.on_ready {
        f(bound);
    }

    shutdown.cancelled().await;
    let deadline = Duration::from_secs(cfg.node.shutdown_timeout_seconds.into());
    let stopped = tokio::time::timeout(deadline, async {
        // Reverse order of start: the API (finishing requests in flight), the cameras and
        // writers (closing and indexing their files), then the store.
        match api.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(err = %e.chain(), "api stopped with an error"),
            Err(e) => tracing::warn!(err = %e, "api task failed"),
        }
        if let Some(a) = alarms {
            a.stop().await;
        }
        bridge.stop().await;
        pipeline.stop().await;
        store.close().await;
    })
    .await;
    match stopped {
        Ok(()) => {
            tracing::info!("stopped");
            Ok(())
        }
        Err(_) => Err(Error::new(
            ErrorKind::Cancelled,
            format!(
                "shutdown took longer than {}s; exiting anyway",
                deadline.as_secs()
            ),
        )),
    }
}

async fn audit_start(store: &dyn Store, cfg: &Config, clock: &dyn Clock) -> Result<(), Error> {
    let now = clock.now();
    // A digest of the effective configuration shape (no secrets) lets an auditor see when it changed.
    let shape = serde_json::json!({
        "cameras": cfg.cameras.iter().map(|c| (&c.id, &c.url, c.record, c.motion.enabled)).collect::<Vec<_>>(),
        "devices": cfg.devices.iter().map(|d| (&d.id, &d.cameras)).collect::<Vec<_>>(),
        "tokens": cfg.api.tokens.iter().map(|t| (&t.name, t.role.as_str(), &t.cameras)).collect::<Vec<_>>(),
        "listen": cfg.api.listen,
    });
    let digest = hex::encode(sha2::Sha256::digest(shape.to_string().as_bytes()));
    store
        .append_audit(&AuditEntry {
            id: EntityId::new_at(now),
            node_id: cfg.node.id.clone(),
            at: now,
            actor: "system".into(),
            actor_kind: ActorKind::System,
            action: "service.start".into(),
            target: None,
            detail:
                serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "config_sha256": digest })
                    .to_string(),
            remote_addr: None,
        })
        .await
}

/// The demo configuration, built into the binary.
pub const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");
/// The demo's simulated cameras and buttons, built into the binary.
pub const DEMO_SIM_CONFIG: &str = include_str!("../../../config/demo-sim.toml");

/// `xueliang demo`: the built-in configuration in a fresh data directory, with a fresh token.
#[allow(clippy::print_stdout)]
pub async fn demo(data_dir: Option<PathBuf>, listen: &str) -> Result<(), Error> {
    let dir = match data_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("xueliang-demo-{}", chrono_stamp())),
    };
    std::fs::create_dir_all(&dir).err_kind(ErrorKind::Unavailable, || {
        format!("cannot create {}", dir.display())
    })?;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut env = std::collections::HashMap::new();
    env.insert("XUELIANG_TOKEN_DEMO_VALUE".to_owned(), token.clone());
    let mut cfg =
        config::load_str(DEMO_CONFIG, "(built-in demo.toml)", &dir, &env).map_err(|e| {
            Error::with_source(
                ErrorKind::Internal,
                "the built-in demo configuration is invalid",
                e,
            )
        })?;
    cfg.node.data_dir = dir.clone();
    cfg.api.listen = listen.to_owned();
    let shutdown = Shutdown::new();
    crate::signals::spawn(shutdown.clone())?;
    let sim_cfg = xueliang_sim::run::SimConfig::parse(DEMO_SIM_CONFIG, "(built-in demo-sim.toml)")
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Internal,
                "the built-in simulator configuration is invalid",
                e,
            )
        })?;
    tracing::info!(
        cameras = sim_cfg.camera_count(),
        "preparing the simulated cameras (the first run encodes their scenes)"
    );
    let sim = xueliang_sim::run::start(sim_cfg, &dir, shutdown.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Unavailable, "cannot start the simulator", e))?;
    let rtsp = sim.rtsp;
    let console_password = demo_admin(&cfg).await?;
    let token_for_banner = token.clone();
    let dir_for_banner = dir.clone();
    let on_ready = Box::new(move |addr: std::net::SocketAddr| {
        println!();
        println!("  Xueliang demo is running.");
        println!("  data directory : {}", dir_for_banner.display());
        println!("  console        : http://{addr}/  (user admin, password {console_password})");
        println!("  health         : http://{addr}/healthz");
        println!("  metrics        : http://{addr}/metrics");
        println!("  API token      : {token_for_banner}");
        println!(
            "  cameras        : curl -H 'Authorization: Bearer {token_for_banner}' http://{addr}/api/v1/cameras"
        );
        println!(
            "  alarms         : curl -H 'Authorization: Bearer {token_for_banner}' http://{addr}/api/v1/alarms"
        );
        println!(
            "  live events    : curl -N -H 'Authorization: Bearer {token_for_banner}' http://{addr}/api/v1/events"
        );
        println!(
            "  cameras (RTSP) : rtsp://{rtsp}/cam/1 .. /cam/4 (e.g. ffplay -rtsp_transport tcp rtsp://{rtsp}/cam/1)"
        );
        println!(
            "  panic buttons  : btn-1 .. btn-8 on the embedded broker; btn-1 presses a minute in"
        );
        println!("  stop           : Ctrl-C (twice to stop at once)");
        println!();
    });
    let result = run(
        Arc::new(cfg),
        RunOptions {
            shutdown: Some(shutdown.clone()),
            on_ready: Some(on_ready),
        },
    )
    .await;
    shutdown.trigger();
    sim.stopped().await;
    result
}

/// The demo's console login: user `admin` with a fresh password (set again when the data
/// directory is reused).
async fn demo_admin(cfg: &Config) -> Result<String, Error> {
    prepare_dirs(cfg)?;
    let password = format!("{}", uuid::Uuid::new_v4().simple())[..16].to_owned();
    let hash = xueliang_api::hash_password_blocking(password.clone()).await?;
    let store = open_store(cfg).await?;
    let now = xueliang_core::Clock::now(&SystemClock);
    let r = if store.get_user_by_name("admin").await?.is_some() {
        store.update_user_password("admin", &hash, now).await
    } else {
        store
            .create_user(&xueliang_store::UserRecord {
                id: xueliang_core::EntityId::new_at(now),
                username: "admin".into(),
                password_hash: hash,
                role: xueliang_core::config::Role::Admin,
                cameras: vec!["*".into()],
                devices: vec!["*".into()],
                disabled: false,
                created_at: now,
                updated_at: now,
            })
            .await
    };
    store.close().await;
    r.map(|_| password)
}

/// `xueliang sim`: the simulator alone, until a signal.
#[allow(clippy::print_stdout)]
pub async fn sim(path: &std::path::Path) -> Result<(), Error> {
    let cfg = xueliang_sim::run::SimConfig::load(path).map_err(|e| {
        Error::with_source(ErrorKind::InvalidArgument, "bad simulator configuration", e)
    })?;
    let base = path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_owned();
    let shutdown = Shutdown::new();
    crate::signals::spawn(shutdown.clone())?;
    let buttons = cfg.buttons.as_ref().map(|b| b.count).unwrap_or(0);
    let running = xueliang_sim::run::start(cfg, &base, shutdown.clone())
        .await
        .map_err(|e| Error::with_source(ErrorKind::Unavailable, "cannot start the simulator", e))?;
    println!(
        "simulator: {} camera(s) at rtsp://{}/cam/1 .. /cam/{}, {} button(s); Ctrl-C stops",
        running.cameras, running.rtsp, running.cameras, buttons
    );
    shutdown.cancelled().await;
    running.stopped().await;
    Ok(())
}

fn chrono_stamp() -> String {
    let now = SystemClock.now();
    format!("{}-{}", now.as_millis(), std::process::id())
}

/// The rustls acceptor for `[api] tls`: the PEM certificate chain and private key, TLS 1.2 and
/// 1.3 on the ring provider, HTTP/1.1 only (the API's one protocol).
fn tls_acceptor(tls: &config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("api.tls.cert_file {}: {e}", tls.cert_file.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "api.tls.cert_file {}: no certificate in it",
                tls.cert_file.display()
            ),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("api.tls.key_file {}: {e}", tls.key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidArgument,
                format!("api.tls: the certificate and key do not make a TLS server: {e}"),
            )
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// Accepted TLS connections. Handshakes run in their own tasks (with a deadline), so a slow
/// or silent client holds up nobody else.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended with the listener; serving stops through shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: xueliang_api::AppState,
    shutdown: Shutdown,
) -> Result<(), Error> {
    use axum::serve::ListenerExt;
    let local = listener
        .local_addr()
        .err_kind(ErrorKind::Internal, || "read bound address".into())?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(err = %e, "api accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, err = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let app =
        xueliang_api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let tls = TlsListener { rx, local }.tap_io(|_| {});
    axum::serve(tls, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .err_kind(ErrorKind::Unavailable, || "HTTPS server failed".into())
}
