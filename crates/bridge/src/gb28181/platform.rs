//! The lower-platform user agent: one task that owns the transport, the client transactions,
//! the registration and keepalive state machine, and answers the upper platform's requests.
//!
//! Other tasks (the alarm sink, catalog pagers) talk to it through [`PlatformHandle`]; the loop
//! never awaits them, so a slow upper cannot stall registration or keepalives.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use xueliang_core::config::{Charset, Gb28181Config, SipTransport};
use xueliang_core::shutdown::Shutdown;

use super::digest::{self, Challenge};
use super::manscdp::{self, DeviceInfo};
use super::sip::{self, MANSCDP_XML, Message, Method, Request, Response};
use super::transport::{self, Inbound, Link};
use super::{Catalog, Channel};

/// Everything the user agent needs, with the timers tests shorten.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    pub local_id: String,
    pub local_listen: SocketAddr,
    pub server_id: String,
    pub server_domain: String,
    pub server_addr: String,
    pub transport: SipTransport,
    pub password: String,
    pub register_expires: Duration,
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before the registration counts as lost (GB/T 28181 §9.6: 3).
    pub keepalive_max_misses: u32,
    pub charset: Charset,
    /// Send `X-GB-Ver: 3.0` (GB/T 28181-2022 Annex I) on every request.
    pub gb2022: bool,
    /// RFC 3261 T1: first UDP retransmission interval.
    pub t1: Duration,
    /// How long a non-INVITE client transaction waits for a final response (RFC 3261: 64·T1).
    pub transaction_timeout: Duration,
    /// Re-registration back-off: first delay and cap; each delay is jittered to 50–100 %.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Catalog items per response MESSAGE; small pages keep UDP datagrams under the MTU.
    pub catalog_page_size: usize,
    pub device_info: DeviceInfo,
    pub user_agent: String,
    /// How long shutdown waits for the unregister answer.
    pub shutdown_grace: Duration,
}

/// Why a config cannot drive the user agent.
#[derive(Debug, thiserror::Error)]
pub enum PlatformConfigError {
    #[error("bridge.gb28181.local_listen {0:?} is not a socket address")]
    Listen(String),
    #[error("bridge.gb28181 has no password (set password or password_file)")]
    NoPassword,
}

impl PlatformConfig {
    /// From the validated `[bridge.gb28181]` table (its secret already resolved).
    pub fn from_config(c: &Gb28181Config) -> Result<Self, PlatformConfigError> {
        let local_listen = c
            .local_listen
            .parse()
            .map_err(|_| PlatformConfigError::Listen(c.local_listen.clone()))?;
        let password = c
            .password
            .as_ref()
            .map(|s| s.expose().to_owned())
            .ok_or(PlatformConfigError::NoPassword)?;
        Ok(PlatformConfig {
            local_id: c.local_id.clone(),
            local_listen,
            server_id: c.server_id.clone(),
            server_domain: c.server_domain.clone(),
            server_addr: c.server_addr.clone(),
            transport: c.transport,
            password,
            register_expires: Duration::from_secs(c.register_expires_seconds.into()),
            keepalive_interval: Duration::from_secs(c.keepalive_seconds.into()),
            keepalive_max_misses: 3,
            charset: c.charset,
            gb2022: c.gb2022,
            t1: Duration::from_millis(500),
            transaction_timeout: Duration::from_secs(32),
            // GB/T 28181 §9.1.2: retry no sooner than 60 s in steady state; the first retries
            // come sooner so a brief blip does not cost a minute of alarms. The cap, jittered to
            // 60-120 s, keeps that floor and brings alarms back within two minutes of the city.
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(120),
            catalog_page_size: 4,
            device_info: DeviceInfo {
                name: "Xueliang".into(),
                manufacturer: "Xueliang".into(),
                model: "xueliang".into(),
                firmware: env!("CARGO_PKG_VERSION").into(),
            },
            user_agent: concat!("Xueliang/", env!("CARGO_PKG_VERSION")).into(),
            shutdown_grace: Duration::from_secs(3),
        })
    }

    /// The SIP domain of this node: the first 10 digits of its id (GB/T 28181 §4.1.3).
    fn local_domain(&self) -> &str {
        self.local_id.get(..10).unwrap_or(&self.local_id)
    }
}

/// Which event an upper platform subscribed to.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionKind {
    Catalog,
    Alarm,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub kind: SubscriptionKind,
    pub call_id: String,
    pub expires_at: Instant,
}

/// What the user agent reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformStatus {
    pub registered: bool,
    /// Successful registrations (and refreshes) so far.
    pub registrations: u64,
    pub keepalive_misses: u32,
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// Why a request to the upper platform got no final response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("not registered with the upper platform")]
    NotRegistered,
    #[error("no final response within the transaction timeout")]
    Timeout,
    #[error("the GB/T 28181 user agent has stopped")]
    Stopped,
    #[error("SIP transport: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
enum Command {
    Message {
        body: Vec<u8>,
        require_registered: bool,
        reply: oneshot::Sender<Result<Response, SendError>>,
    },
    /// An Alarm notify body: a NOTIFY in a matching alarm subscription, else a MESSAGE.
    Alarm {
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Response, SendError>>,
    },
}

/// Cloneable access to a running user agent.
#[derive(Clone, Debug)]
pub struct PlatformHandle {
    cmd: mpsc::Sender<Command>,
    status: watch::Receiver<PlatformStatus>,
    /// `status.registered` alone, so a waiter wakes only when it flips.
    registered: watch::Receiver<bool>,
    local_addr: SocketAddr,
}

impl PlatformHandle {
    pub fn status(&self) -> PlatformStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<PlatformStatus> {
        self.status.clone()
    }

    /// Whether the node is registered with the upper platform; changes only when that flips.
    pub fn watch_registered(&self) -> watch::Receiver<bool> {
        self.registered.clone()
    }

    /// The bound SIP address (UDP) or the configured listen address (TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Wait until registered (or the user agent stops).
    pub async fn registered(&self) -> Result<(), SendError> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.registered)
            .await
            .map(|_| ())
            .map_err(|_| SendError::Stopped)
    }

    /// Send a MANSCDP MESSAGE to the upper platform and wait for its final response, whatever
    /// the status. Refused without sending while not registered: uppers drop requests from
    /// unregistered devices, and holding them is the outbox's job.
    pub async fn send_message(&self, body: Vec<u8>) -> Result<Response, SendError> {
        self.message(body, true).await
    }

    /// Send an Alarm notify body (from [`manscdp::alarm_body`]) and wait for the final
    /// response: as a NOTIFY when the upper holds an alarm subscription (`Event: presence`)
    /// whose priority and method filter the alarm passes, otherwise as a MESSAGE, the
    /// standard's unsolicited form. Refused while not registered, like [`Self::send_message`].
    pub async fn send_alarm(&self, body: Vec<u8>) -> Result<Response, SendError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Alarm { body, reply })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }

    async fn message(
        &self,
        body: Vec<u8>,
        require_registered: bool,
    ) -> Result<Response, SendError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Message {
                body,
                require_registered,
                reply,
            })
            .await
            .map_err(|_| SendError::Stopped)?;
        rx.await.map_err(|_| SendError::Stopped)?
    }
}

/// Start the user agent. Binds (UDP) before returning so a taken port is reported at once; a
/// TCP connection is made, and remade, by the task itself.
pub async fn spawn(
    cfg: PlatformConfig,
    catalog: watch::Receiver<Catalog>,
    shutdown: Shutdown,
) -> io::Result<(PlatformHandle, JoinHandle<()>)> {
    let server = resolve(&cfg.server_addr).await?;
    let (in_tx, in_rx) = mpsc::channel(256);
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let mut readers = Vec::new();
    let (link, local) = match cfg.transport {
        SipTransport::Udp => {
            let (sock, task) = transport::bind_udp(cfg.local_listen, in_tx.clone()).await?;
            readers.push(task);
            let mut local = sock.local_addr()?;
            if local.ip().is_unspecified() {
                local.set_ip(route_ip(server).await?);
            }
            (Link::Udp(sock), local)
        }
        SipTransport::Tcp => (Link::Down, cfg.local_listen),
    };
    let (status_tx, status_rx) = watch::channel(PlatformStatus::default());
    let (registered_tx, registered_rx) = watch::channel(false);
    let handle = PlatformHandle {
        cmd: cmd_tx.clone(),
        status: status_rx,
        registered: registered_rx,
        local_addr: local,
    };
    let mut catalog = catalog;
    let announced = catalog
        .borrow_and_update()
        .channels
        .iter()
        .map(|c| (c.id.clone(), c.clone()))
        .collect();
    let mut core = Core {
        call_id: new_call_id(local),
        cfg,
        link,
        server,
        local,
        in_tx,
        in_rx,
        cmd_rx,
        handle: handle.clone(),
        catalog,
        status_tx,
        registered_tx,
        status: PlatformStatus::default(),
        txns: HashMap::new(),
        served: HashMap::new(),
        reg: Reg::Waiting { at: Instant::now() },
        registered_until: None,
        attempt: 0,
        ka_at: None,
        ka_branch: None,
        cseq: 0,
        sn: rand::rng().random_range(1..100_000),
        subs: HashMap::new(),
        readers,
        generation: 0,
        unregistered: false,
        announced,
        catalog_open: true,
    };
    let span = tracing::info_span!("gb28181", server = %core.cfg.server_addr);
    let task = tokio::spawn(
        async move {
            core.run(shutdown).await;
        }
        .instrument(span),
    );
    Ok((handle, task))
}

async fn resolve(addr: &str) -> io::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{addr} did not resolve")))
}

/// The local address the kernel would use towards `server`: what Via and Contact must carry
/// when listening on 0.0.0.0.
async fn route_ip(server: SocketAddr) -> io::Result<std::net::IpAddr> {
    let probe = tokio::net::UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .await?;
    probe.connect(server).await?;
    Ok(probe.local_addr()?.ip())
}

fn rand_hex(n: usize) -> String {
    let mut r = rand::rng();
    (0..n)
        .map(|_| char::from_digit(r.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}

fn new_call_id(local: SocketAddr) -> String {
    format!("{}@{}", rand_hex(24), local.ip())
}

#[derive(Debug)]
enum Purpose {
    Register {
        unregister: bool,
        authed: bool,
    },
    Keepalive,
    User(oneshot::Sender<Result<Response, SendError>>),
    /// A catalog NOTIFY: best effort, the next change or query tells the upper again.
    CatalogNotify,
}

#[derive(Debug)]
struct ClientTxn {
    request: Request,
    bytes: Vec<u8>,
    next_retx: Option<Instant>,
    interval: Duration,
    deadline: Instant,
    purpose: Purpose,
}

#[derive(Debug)]
enum Reg {
    /// Next attempt at this time.
    Waiting {
        at: Instant,
    },
    Pending,
    Registered {
        refresh_at: Instant,
    },
    /// Shutting down or stopped: no more attempts.
    Off,
}

/// A subscription the upper holds: also the dialog its NOTIFYs are sent in (RFC 6665).
#[derive(Debug)]
struct Subscription {
    kind: SubscriptionKind,
    expires_at: Instant,
    /// Request-URI of NOTIFYs: the SUBSCRIBE's Contact, else its From URI.
    target: String,
    /// The subscriber's From (with its tag): a NOTIFY's To.
    remote: String,
    /// The SUBSCRIBE's To with the tag this node answered with: a NOTIFY's From.
    local: String,
    /// The SUBSCRIBE's Event header, echoed.
    event: String,
    /// The last CSeq this node used in the dialog.
    cseq: u32,
    filter: AlarmFilter,
}

/// An alarm subscription's filter (GB/T 28181 §9.11 Query body): a priority range, 0 meaning
/// any, and the alarm methods wanted as digits, `0` meaning all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct AlarmFilter {
    start_priority: u8,
    end_priority: u8,
    methods: String,
}

impl AlarmFilter {
    fn from_query(doc: &str) -> AlarmFilter {
        let num = |name: &str| {
            manscdp::element(doc, name)
                .and_then(|v| v.trim().parse::<u8>().ok())
                .unwrap_or(0)
        };
        AlarmFilter {
            start_priority: num("StartAlarmPriority"),
            end_priority: num("EndAlarmPriority"),
            methods: manscdp::element(doc, "AlarmMethod")
                .map(|m| m.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    /// Whether an alarm body passes: unknown fields pass (the upper asked for alarms).
    fn admits(&self, alarm: &str) -> bool {
        let priority = manscdp::element(alarm, "AlarmPriority").and_then(|v| v.parse::<u8>().ok());
        if let Some(p) = priority {
            if self.start_priority != 0 && p < self.start_priority {
                return false;
            }
            if self.end_priority != 0 && p > self.end_priority {
                return false;
            }
        }
        let all = self.methods.is_empty() || self.methods.contains('0');
        match manscdp::element(alarm, "AlarmMethod") {
            Some(m) if !all => m.chars().all(|c| self.methods.contains(c)),
            _ => true,
        }
    }
}

struct Core {
    cfg: PlatformConfig,
    link: Link,
    server: SocketAddr,
    local: SocketAddr,
    in_tx: mpsc::Sender<Inbound>,
    in_rx: mpsc::Receiver<Inbound>,
    cmd_rx: mpsc::Receiver<Command>,
    handle: PlatformHandle,
    catalog: watch::Receiver<Catalog>,
    status_tx: watch::Sender<PlatformStatus>,
    registered_tx: watch::Sender<bool>,
    status: PlatformStatus,
    /// Client transactions by Via branch.
    txns: HashMap<String, ClientTxn>,
    /// Server transactions by (branch, method): the response to repeat when a UDP request is
    /// retransmitted, so a lost 200 never triggers a second catalog answer.
    served: HashMap<(String, String), (Vec<u8>, SocketAddr, Instant)>,
    reg: Reg,
    registered_until: Option<Instant>,
    /// Consecutive failed registration attempts (the back-off exponent).
    attempt: u32,
    call_id: String,
    ka_at: Option<Instant>,
    ka_branch: Option<String>,
    cseq: u32,
    sn: u32,
    subs: HashMap<String, Subscription>,
    readers: Vec<JoinHandle<()>>,
    generation: u64,
    unregistered: bool,
    /// The catalog as catalog subscribers last heard of it, by channel id.
    announced: HashMap<String, Channel>,
    /// False once the catalog's sender is gone (nothing will change any more).
    catalog_open: bool,
}

enum Wake {
    Inbound(Inbound),
    Command(Command),
    Catalog(bool),
    Timer,
    Shutdown,
}

impl Core {
    async fn run(&mut self, shutdown: Shutdown) {
        loop {
            match self.next(Some(&shutdown)).await {
                Wake::Shutdown => break,
                w => self.handle_wake(w).await,
            }
        }
        // Unregister (Expires: 0) so the upper shows us offline now rather than at expiry.
        if self.registered_until.is_some() && self.link.is_up() {
            self.send_register(true, None).await;
            let deadline = Instant::now() + self.cfg.shutdown_grace;
            while !self.unregistered && Instant::now() < deadline {
                tokio::select! {
                    w = self.next(None) => self.handle_wake(w).await,
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }
        self.reg = Reg::Off;
        for (_, t) in self.txns.drain() {
            if let Purpose::User(tx) = t.purpose {
                let _ = tx.send(Err(SendError::Stopped));
            }
        }
        for r in &self.readers {
            r.abort();
        }
        self.set_registered(None);
        tracing::info!("gb28181 user agent stopped");
    }

    fn next_deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_secs(3600);
        for t in self.txns.values() {
            next = next.min(t.deadline);
            if let Some(r) = t.next_retx {
                next = next.min(r);
            }
        }
        match self.reg {
            Reg::Waiting { at } => next = next.min(at),
            Reg::Registered { refresh_at } => next = next.min(refresh_at),
            Reg::Pending | Reg::Off => {}
        }
        if let Some(k) = self.ka_at {
            next = next.min(k);
        }
        for s in self.subs.values() {
            next = next.min(s.expires_at);
        }
        for (_, _, exp) in self.served.values() {
            next = next.min(*exp);
        }
        next
    }

    async fn next(&mut self, shutdown: Option<&Shutdown>) -> Wake {
        let deadline = self.next_deadline();
        let stop = async {
            match shutdown {
                Some(s) => s.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let catalog_open = self.catalog_open;
        let catalog = async {
            if catalog_open {
                self.catalog.changed().await.is_ok()
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            biased;
            _ = stop => Wake::Shutdown,
            Some(i) = self.in_rx.recv() => Wake::Inbound(i),
            Some(c) = self.cmd_rx.recv() => Wake::Command(c),
            open = catalog => Wake::Catalog(open),
            _ = tokio::time::sleep_until(deadline) => Wake::Timer,
        }
    }

    async fn handle_wake(&mut self, w: Wake) {
        match w {
            Wake::Inbound(Inbound::Message(Message::Response(r), _)) => self.on_response(r).await,
            Wake::Inbound(Inbound::Message(Message::Request(r), from)) => {
                self.on_request(r, from).await
            }
            Wake::Inbound(Inbound::Closed(generation)) => {
                if generation == self.generation && self.link.is_up() {
                    tracing::warn!("gb28181 TCP connection to the upper platform closed");
                    self.link = Link::Down;
                    self.lost("TCP connection closed");
                }
            }
            Wake::Command(Command::Message {
                body,
                require_registered,
                reply,
            }) => {
                if require_registered && self.registered_until.is_none() {
                    let _ = reply.send(Err(SendError::NotRegistered));
                    return;
                }
                let req = self.request(Method::Message, body);
                self.start_user(req, reply).await;
            }
            Wake::Command(Command::Alarm { body, reply }) => {
                if self.registered_until.is_none() {
                    let _ = reply.send(Err(SendError::NotRegistered));
                    return;
                }
                let req = match self.alarm_notify(&body) {
                    Some(req) => req,
                    None => self.request(Method::Message, body),
                };
                self.start_user(req, reply).await;
            }
            Wake::Catalog(true) => self.on_catalog().await,
            Wake::Catalog(false) => self.catalog_open = false,
            Wake::Timer => self.on_timer().await,
            Wake::Shutdown => {}
        }
    }

    // ---- client side -------------------------------------------------------------------

    async fn start_user(
        &mut self,
        req: Request,
        reply: oneshot::Sender<Result<Response, SendError>>,
    ) {
        if let Err((e, purpose)) = self.start(req, Purpose::User(reply), None).await
            && let Purpose::User(reply) = purpose
        {
            let _ = reply.send(Err(SendError::Io(e)));
        }
    }

    /// A NOTIFY carrying `body` in the longest-lived alarm subscription that admits it.
    fn alarm_notify(&mut self, body: &[u8]) -> Option<Request> {
        let now = Instant::now();
        let doc = manscdp::decode(body);
        let call_id = self
            .subs
            .iter()
            .filter(|(_, s)| {
                s.kind == SubscriptionKind::Alarm && s.expires_at > now && s.filter.admits(&doc)
            })
            .max_by_key(|(_, s)| s.expires_at)
            .map(|(id, _)| id.clone())?;
        self.notify_request(&call_id, body)
    }

    /// The catalog changed: tell every catalog subscriber which channels went on or off, came
    /// or went, in NOTIFYs of at most a catalog page each.
    async fn on_catalog(&mut self) {
        let cat = self.catalog.borrow_and_update().clone();
        let mut changes = Vec::new();
        for ch in &cat.channels {
            match self.announced.get(&ch.id) {
                None => changes.push((ch.clone(), manscdp::CatalogEvent::Add)),
                Some(prev) if prev.online != ch.online => {
                    let e = if ch.online {
                        manscdp::CatalogEvent::On
                    } else {
                        manscdp::CatalogEvent::Off
                    };
                    changes.push((ch.clone(), e));
                }
                Some(_) => {}
            }
        }
        for (id, prev) in &self.announced {
            if !cat.channels.iter().any(|c| &c.id == id) {
                changes.push((prev.clone(), manscdp::CatalogEvent::Del));
            }
        }
        self.announced = cat
            .channels
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        if changes.is_empty() || self.registered_until.is_none() {
            return;
        }
        let now = Instant::now();
        let subscribers: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.kind == SubscriptionKind::Catalog && s.expires_at > now)
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in subscribers {
            for chunk in changes.chunks(self.cfg.catalog_page_size.max(1)) {
                self.sn = self.sn.wrapping_add(1);
                let body =
                    manscdp::catalog_notify(self.sn, &self.cfg.local_id, chunk, self.cfg.charset);
                let Some(req) = self.notify_request(&call_id, &body) else {
                    continue;
                };
                tracing::info!(
                    changes = chunk.len(),
                    "gb28181 catalog change notified to the upper"
                );
                if let Err((e, _)) = self.start(req, Purpose::CatalogNotify, None).await {
                    tracing::debug!(error = %e, "gb28181 catalog NOTIFY not sent");
                }
            }
        }
    }

    /// A NOTIFY in the dialog of subscription `call_id`.
    fn notify_request(&mut self, call_id: &str, body: &[u8]) -> Option<Request> {
        let now = Instant::now();
        let via = self.via();
        let sub = self.subs.get_mut(call_id)?;
        sub.cseq += 1;
        let mut req = Request::new(Method::Notify, sub.target.clone());
        let h = &mut req.headers;
        h.push("Via", via);
        h.push("From", sub.local.clone());
        h.push("To", sub.remote.clone());
        h.push("Call-ID", call_id);
        h.push("CSeq", format!("{} NOTIFY", sub.cseq));
        h.push("Max-Forwards", "70");
        h.push("Event", sub.event.clone());
        let left = sub
            .expires_at
            .saturating_duration_since(now)
            .as_secs()
            .max(1);
        h.push(
            "Subscription-State",
            format!("active;expires={left};retry-after=0"),
        );
        h.push("User-Agent", self.cfg.user_agent.clone());
        if self.cfg.gb2022 {
            h.push("X-GB-Ver", "3.0");
        }
        h.push("Content-Type", MANSCDP_XML);
        req.body = body.to_vec();
        Some(req)
    }

    /// A Via header with a fresh branch.
    fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};rport;branch=z9hG4bK{}",
            self.transport_name(),
            self.local,
            rand_hex(16)
        )
    }

    fn publish(&mut self) {
        self.status.subscriptions = self
            .subs
            .iter()
            .map(|(call_id, s)| SubscriptionInfo {
                kind: s.kind,
                call_id: call_id.clone(),
                expires_at: s.expires_at,
            })
            .collect();
        self.status
            .subscriptions
            .sort_by(|a, b| a.call_id.cmp(&b.call_id));
        self.status_tx.send_replace(self.status.clone());
        let registered = self.status.registered;
        self.registered_tx
            .send_if_modified(|r| std::mem::replace(r, registered) != registered);
    }

    fn set_registered(&mut self, until: Option<Instant>) {
        self.registered_until = until;
        self.status.registered = until.is_some();
        self.publish();
    }

    fn transport_name(&self) -> &'static str {
        match self.cfg.transport {
            SipTransport::Udp => "UDP",
            SipTransport::Tcp => "TCP",
        }
    }

    fn server_uri(&self) -> String {
        format!("sip:{}@{}", self.cfg.server_id, self.cfg.server_addr)
    }

    fn common_headers(&mut self, req: &mut Request, call_id: &str) {
        self.cseq += 1;
        let via = self.via();
        let h = &mut req.headers;
        h.push("Via", via);
        h.push(
            "From",
            format!(
                "<sip:{}@{}>;tag={}",
                self.cfg.local_id,
                self.cfg.local_domain(),
                rand_hex(10)
            ),
        );
        h.push("Call-ID", call_id);
        h.push("CSeq", format!("{} {}", self.cseq, req.method));
        h.push("Max-Forwards", "70");
        h.push("User-Agent", self.cfg.user_agent.clone());
        if self.cfg.gb2022 {
            h.push("X-GB-Ver", "3.0");
        }
    }

    /// A MANSCDP request to the upper platform, each in its own dialog-less transaction.
    fn request(&mut self, method: Method, body: Vec<u8>) -> Request {
        let mut req = Request::new(method, self.server_uri());
        let call_id = new_call_id(self.local);
        self.common_headers(&mut req, &call_id);
        req.headers.push(
            "To",
            format!("<sip:{}@{}>", self.cfg.server_id, self.cfg.server_domain),
        );
        req.headers.push("Content-Type", MANSCDP_XML);
        req.body = body;
        req
    }

    async fn start(
        &mut self,
        req: Request,
        purpose: Purpose,
        timeout: Option<Duration>,
    ) -> Result<String, (io::Error, Purpose)> {
        let Some(branch) = req.branch().map(str::to_owned) else {
            return Err((io::Error::other("request without branch"), purpose));
        };
        let bytes = req.to_bytes();
        if let Err(e) = self.link.send(&bytes, self.server).await {
            return Err((e, purpose));
        }
        let now = Instant::now();
        let interval = self.cfg.t1;
        let next_retx = (!self.link.reliable()).then_some(now + interval);
        self.txns.insert(
            branch.clone(),
            ClientTxn {
                request: req,
                bytes,
                next_retx,
                interval,
                deadline: now + timeout.unwrap_or(self.cfg.transaction_timeout),
                purpose,
            },
        );
        Ok(branch)
    }

    async fn send_register(&mut self, unregister: bool, auth: Option<(&Challenge, u32)>) {
        if !self.link.is_up() && self.cfg.transport == SipTransport::Tcp {
            self.generation += 1;
            match transport::connect_tcp(self.server, self.generation, self.in_tx.clone()).await {
                Ok((write, local, task)) => {
                    self.link = Link::Tcp(write);
                    self.local = local;
                    self.readers.retain(|r| !r.is_finished());
                    self.readers.push(task);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "gb28181 TCP connect failed");
                    self.register_failed();
                    return;
                }
            }
        }
        let aor = format!("<sip:{}@{}>", self.cfg.local_id, self.cfg.local_domain());
        let uri = self.server_uri();
        let mut req = Request::new(Method::Register, uri.clone());
        let call_id = self.call_id.clone();
        self.common_headers(&mut req, &call_id);
        req.headers.push("To", aor);
        req.headers.push(
            "Contact",
            format!("<sip:{}@{}>", self.cfg.local_id, self.local),
        );
        let expires = if unregister {
            0
        } else {
            self.cfg.register_expires.as_secs()
        };
        req.headers.push("Expires", expires.to_string());
        if let Some((ch, nc)) = auth {
            req.headers.push(
                "Authorization",
                digest::authorization(
                    ch,
                    &self.cfg.local_id,
                    &self.cfg.password,
                    "REGISTER",
                    &uri,
                    &rand_hex(16),
                    nc,
                ),
            );
        }
        self.reg = if unregister { Reg::Off } else { Reg::Pending };
        let purpose = Purpose::Register {
            unregister,
            authed: auth.is_some(),
        };
        if let Err((e, _)) = self.start(req, purpose, None).await {
            tracing::warn!(error = %e, "gb28181 REGISTER not sent");
            if unregister {
                self.unregistered = true;
            } else {
                self.register_failed();
            }
        }
    }

    fn backoff(&self) -> Duration {
        let exp = self.attempt.min(16);
        let d = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.cfg.retry_cap);
        // Jitter to 50–100 % so villages that lost the uplink together do not return together.
        d.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    fn register_failed(&mut self) {
        let delay = self.backoff();
        self.attempt = self.attempt.saturating_add(1);
        tracing::info!(
            retry_in_ms = delay.as_millis() as u64,
            attempt = self.attempt,
            "gb28181 registration failed"
        );
        self.ka_at = None;
        self.ka_branch = None;
        self.reg = Reg::Waiting {
            at: Instant::now() + delay,
        };
        self.set_registered(None);
    }

    /// The upper stopped answering (or forgot us): register afresh after a jittered delay.
    fn lost(&mut self, why: &str) {
        if matches!(self.reg, Reg::Off) {
            return;
        }
        tracing::warn!(reason = why, "gb28181 registration lost");
        if let Some(b) = self.ka_branch.take() {
            self.txns.remove(&b);
        }
        // The upper subscribes again after the new registration (wvp drops its side too).
        if !self.subs.is_empty() {
            self.subs.clear();
            self.publish();
        }
        // A new Call-ID makes it a fresh registration, so the upper re-queries the catalog.
        self.call_id = new_call_id(self.local);
        self.register_failed();
    }

    async fn on_response(&mut self, resp: Response) {
        let Some(branch) = resp.branch().map(str::to_owned) else {
            return;
        };
        let Some(txn) = self.txns.get_mut(&branch) else {
            return; // late retransmitted response of a finished transaction
        };
        if resp.cseq().map(|(_, m)| m) != Some(txn.request.method.clone()) {
            return;
        }
        if resp.status < 200 {
            // RFC 3261 §17.1.2.2: after a provisional response keep retransmitting at T2.
            if let Some(r) = txn.next_retx.as_mut() {
                txn.interval = Duration::from_secs(4);
                *r = Instant::now() + txn.interval;
            }
            return;
        }
        let Some(txn) = self.txns.remove(&branch) else {
            return;
        };
        self.finish(txn, Ok(resp)).await;
    }

    async fn finish(&mut self, txn: ClientTxn, result: Result<Response, SendError>) {
        // A NOTIFY the upper no longer knows the dialog of (481, e.g. after its restart) or
        // refuses outright: drop that subscription, so the retry goes as a MESSAGE.
        if txn.request.method == Method::Notify
            && let Ok(r) = &result
            && matches!(r.status, 481 | 403 | 404 | 489)
            && let Some(call_id) = txn.request.call_id()
            && self.subs.remove(call_id).is_some()
        {
            tracing::warn!(
                status = r.status,
                "gb28181 upper refused a NOTIFY; its subscription is dropped"
            );
            self.publish();
        }
        match txn.purpose {
            Purpose::User(tx) => {
                let _ = tx.send(result);
            }
            Purpose::CatalogNotify => match result {
                Ok(r) if r.status < 300 => {}
                Ok(r) => tracing::warn!(status = r.status, "gb28181 catalog NOTIFY refused"),
                Err(e) => tracing::warn!(error = %e, "gb28181 catalog NOTIFY unanswered"),
            },
            Purpose::Keepalive => {
                self.ka_branch = None;
                match result {
                    Ok(r) if r.status < 300 => {
                        self.status.keepalive_misses = 0;
                        self.publish();
                    }
                    // Hikvision and wvp uppers answer 403/404 to a device they no longer hold
                    // as registered (after their restart): register again instead of counting.
                    Ok(r) if matches!(r.status, 401 | 403 | 404) => {
                        self.lost("upper no longer knows this platform")
                    }
                    _ => self.keepalive_missed(),
                }
            }
            Purpose::Register { unregister, authed } => {
                if unregister {
                    if let Ok(r) = &result
                        && matches!(r.status, 401 | 407)
                        && !authed
                        && let Some(ch) = challenge(r)
                    {
                        self.send_register(true, Some((&ch, 1))).await;
                        return;
                    }
                    self.unregistered = true;
                    return;
                }
                match result {
                    Ok(r) if r.status < 300 => {
                        let granted = granted_expires(&r).unwrap_or(self.cfg.register_expires);
                        let now = Instant::now();
                        // Refresh at 80 %: ample margin for a retransmitted REGISTER and a 401 round.
                        let refresh_at = now + granted.mul_f64(0.8);
                        self.reg = Reg::Registered { refresh_at };
                        self.attempt = 0;
                        let first = self.registered_until.is_none();
                        self.status.registrations += 1;
                        self.set_registered(Some(now + granted));
                        if first {
                            tracing::info!(expires_s = granted.as_secs(), "gb28181 registered");
                            self.status.keepalive_misses = 0;
                            self.ka_at = Some(now + self.cfg.keepalive_interval);
                        }
                    }
                    Ok(r) if matches!(r.status, 401 | 407) && !authed => match challenge(&r) {
                        Some(ch) if ch.supported() => {
                            self.send_register(false, Some((&ch, 1))).await
                        }
                        _ => {
                            tracing::warn!("gb28181 upper sent a challenge we cannot answer");
                            self.register_failed();
                        }
                    },
                    Ok(r) => {
                        tracing::warn!(status = r.status, "gb28181 REGISTER rejected");
                        self.register_failed();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "gb28181 REGISTER failed");
                        self.register_failed();
                    }
                }
            }
        }
    }

    fn keepalive_missed(&mut self) {
        self.status.keepalive_misses += 1;
        self.publish();
        tracing::debug!(
            misses = self.status.keepalive_misses,
            "gb28181 keepalive unanswered"
        );
        if self.status.keepalive_misses >= self.cfg.keepalive_max_misses {
            self.lost("keepalives unanswered");
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        // Transactions: retransmit or time out.
        let due: Vec<String> = self
            .txns
            .iter()
            .filter(|(_, t)| t.deadline <= now || t.next_retx.is_some_and(|r| r <= now))
            .map(|(b, _)| b.clone())
            .collect();
        for b in due {
            let expired = self.txns.get(&b).is_some_and(|t| t.deadline <= now);
            if expired {
                if let Some(t) = self.txns.remove(&b) {
                    self.finish(t, Err(SendError::Timeout)).await;
                }
                continue;
            }
            let Some(t) = self.txns.get_mut(&b) else {
                continue;
            };
            t.interval = (t.interval * 2).min(Duration::from_secs(4));
            t.next_retx = Some(now + t.interval);
            let bytes = t.bytes.clone();
            if let Err(e) = self.link.send(&bytes, self.server).await {
                tracing::debug!(error = %e, "gb28181 retransmission not sent");
            }
        }
        self.served.retain(|_, (_, _, exp)| *exp > now);
        let before = self.subs.len();
        self.subs.retain(|_, s| s.expires_at > now);
        if self.subs.len() != before {
            self.publish();
        }
        match self.reg {
            Reg::Waiting { at } if at <= now => self.send_register(false, None).await,
            Reg::Registered { refresh_at } if refresh_at <= now => {
                self.send_register(false, None).await
            }
            _ => {}
        }
        if self.registered_until.is_some_and(|u| u <= now) {
            self.lost("registration expired");
        }
        if let Some(k) = self.ka_at
            && k <= now
        {
            if let Some(b) = self.ka_branch.take()
                && self.txns.remove(&b).is_some()
            {
                self.keepalive_missed();
            }
            if self.registered_until.is_some() {
                self.ka_at = Some(now + self.cfg.keepalive_interval);
                self.sn = self.sn.wrapping_add(1);
                let body = manscdp::keepalive(self.sn, &self.cfg.local_id, self.cfg.charset);
                let req = self.request(Method::Message, body);
                // An answer later than the next keepalive is as good as none.
                let timeout = self
                    .cfg
                    .keepalive_interval
                    .min(self.cfg.transaction_timeout);
                match self.start(req, Purpose::Keepalive, Some(timeout)).await {
                    Ok(b) => self.ka_branch = Some(b),
                    Err((e, _)) => {
                        tracing::debug!(error = %e, "gb28181 keepalive not sent");
                        self.keepalive_missed();
                    }
                }
            } else {
                self.ka_at = None;
            }
        }
    }

    // ---- server side -------------------------------------------------------------------

    async fn on_request(&mut self, req: Request, from: SocketAddr) {
        if req.method == Method::Ack {
            return;
        }
        let key = (
            req.branch().unwrap_or_default().to_owned(),
            req.method.to_string(),
        );
        if let Some((bytes, to, _)) = self.served.get(&key) {
            let (bytes, to) = (bytes.clone(), *to);
            let _ = self.link.send(&bytes, to).await;
            return;
        }
        // Only the upper platform may query this node's catalog.
        let tag = rand_hex(10);
        let (status, extra, body, after) = if from.ip() != self.server.ip() {
            (403, Vec::new(), Vec::new(), None)
        } else {
            self.serve(&req, &tag)
        };
        let mut resp = Response::to(&req, status, sip::reason(status), &tag);
        resp.headers.push("User-Agent", self.cfg.user_agent.clone());
        if self.cfg.gb2022 {
            resp.headers.push("X-GB-Ver", "3.0");
        }
        for (n, v) in extra {
            resp.headers.push(n, v);
        }
        if !body.is_empty() {
            resp.headers.push("Content-Type", MANSCDP_XML);
            resp.body = body;
        }
        let bytes = resp.to_bytes();
        if let Err(e) = self.link.send(&bytes, from).await {
            tracing::debug!(error = %e, "gb28181 response not sent");
        }
        self.served.insert(
            key,
            (bytes, from, Instant::now() + self.cfg.transaction_timeout),
        );
        if let Some(bodies) = after {
            // Answers go out after the 200, each in its own transaction; sequentially, like
            // wvp's paging, so a large catalog does not flood the upper's UDP socket.
            let h = self.handle.clone();
            tokio::spawn(async move {
                for b in bodies {
                    if let Err(e) = h.message(b, false).await {
                        tracing::debug!(error = %e, "gb28181 query answer not delivered");
                    }
                }
            });
        }
    }

    /// Decide the response to a request: status, extra headers, body, and MESSAGE bodies to
    /// send afterwards.
    #[allow(clippy::type_complexity)]
    fn serve(
        &mut self,
        req: &Request,
        tag: &str,
    ) -> (
        u16,
        Vec<(&'static str, String)>,
        Vec<u8>,
        Option<Vec<Vec<u8>>>,
    ) {
        let cs = self.cfg.charset;
        let id = self.cfg.local_id.clone();
        match req.method {
            Method::Options => (
                200,
                vec![(
                    "Allow",
                    "REGISTER, MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY".to_owned(),
                )],
                Vec::new(),
                None,
            ),
            Method::Message => {
                let Some(env) = manscdp::parse_envelope(&req.body) else {
                    return (400, Vec::new(), Vec::new(), None);
                };
                let sn = env.sn.unwrap_or(0);
                match (
                    env.root.as_str(),
                    env.cmd_type.to_ascii_lowercase().as_str(),
                ) {
                    ("Query", "catalog") => {
                        let cat = self.catalog.borrow().clone();
                        let pages =
                            manscdp::catalog_pages(sn, &id, &cat, self.cfg.catalog_page_size, cs);
                        (200, Vec::new(), Vec::new(), Some(pages))
                    }
                    ("Query", "deviceinfo") => {
                        let n = self.catalog.borrow().channels.len();
                        let b = manscdp::device_info(sn, &id, &self.cfg.device_info, n, cs);
                        (200, Vec::new(), Vec::new(), Some(vec![b]))
                    }
                    ("Query", "devicestatus") => {
                        let now = chrono::Utc::now().with_timezone(&manscdp::china_standard_time());
                        let b = manscdp::device_status(sn, &id, true, now, cs);
                        (200, Vec::new(), Vec::new(), Some(vec![b]))
                    }
                    // Business answers (e.g. the upper's Alarm `Result OK`) and broadcasts.
                    ("Response" | "Notify", _) => (200, Vec::new(), Vec::new(), None),
                    _ => (404, Vec::new(), Vec::new(), None),
                }
            }
            Method::Subscribe => self.subscribe(req, tag),
            Method::Notify => (200, Vec::new(), Vec::new(), None),
            // No media in this node: decline calls so the upper does not wait on them.
            Method::Invite => (488, Vec::new(), Vec::new(), None),
            Method::Bye | Method::Cancel => (481, Vec::new(), Vec::new(), None),
            _ => (501, Vec::new(), Vec::new(), None),
        }
    }

    #[allow(clippy::type_complexity)]
    fn subscribe(
        &mut self,
        req: &Request,
        tag: &str,
    ) -> (
        u16,
        Vec<(&'static str, String)>,
        Vec<u8>,
        Option<Vec<Vec<u8>>>,
    ) {
        let event = req
            .headers
            .get("event")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let env = manscdp::parse_envelope(&req.body);
        let cmd = env.as_ref().map(|e| e.cmd_type.to_ascii_lowercase());
        // Catalog: `Event: Catalog` (wvp, rsip-based stacks). Alarm: `Event: presence`, as in the
        // standard's own example and wvp's alarmSubscribe.
        let kind = match (event.as_str(), cmd.as_deref()) {
            ("catalog", _) | (_, Some("catalog")) => SubscriptionKind::Catalog,
            ("presence" | "alarm", _) | (_, Some("alarm")) => SubscriptionKind::Alarm,
            _ => return (489, Vec::new(), Vec::new(), None),
        };
        let Some(call_id) = req.call_id().map(str::to_owned) else {
            return (400, Vec::new(), Vec::new(), None);
        };
        let expires = req.expires().unwrap_or(3600).min(86_400);
        if expires == 0 {
            self.subs.remove(&call_id);
        } else {
            let expires_at = Instant::now() + Duration::from_secs(expires.into());
            let filter = AlarmFilter::from_query(&manscdp::decode(&req.body));
            match self.subs.get_mut(&call_id) {
                // A refresh in the dialog: new expiry and filter, same dialog.
                Some(sub) if sub.kind == kind => {
                    sub.expires_at = expires_at;
                    sub.filter = filter;
                }
                _ => {
                    let from = req.headers.get("from").unwrap_or_default().to_owned();
                    let to = req.headers.get("to").unwrap_or_default();
                    let local = if sip::param(to, "tag").is_some() {
                        to.to_owned()
                    } else {
                        format!("{to};tag={tag}")
                    };
                    let target = req
                        .headers
                        .get("contact")
                        .map(sip::header_uri)
                        .filter(|u| !u.is_empty() && *u != "*")
                        .unwrap_or_else(|| sip::header_uri(&from))
                        .to_owned();
                    let event = req.headers.get("event").unwrap_or("presence").to_owned();
                    self.subs.insert(
                        call_id,
                        Subscription {
                            kind,
                            expires_at,
                            target,
                            remote: from,
                            local,
                            event,
                            cseq: 0,
                            filter,
                        },
                    );
                }
            }
        }
        self.publish();
        let sn = env.and_then(|e| e.sn).unwrap_or(0);
        let cmd_type = match kind {
            SubscriptionKind::Catalog => "Catalog",
            SubscriptionKind::Alarm => "Alarm",
        };
        let body = manscdp::result(cmd_type, sn, &self.cfg.local_id, true, self.cfg.charset);
        (
            200,
            vec![
                ("Expires", expires.to_string()),
                (
                    "Contact",
                    format!("<sip:{}@{}>", self.cfg.local_id, self.local),
                ),
            ],
            body,
            None,
        )
    }
}

fn challenge(r: &Response) -> Option<Challenge> {
    r.headers
        .get("www-authenticate")
        .or_else(|| r.headers.get("proxy-authenticate"))
        .and_then(Challenge::parse)
}

/// What the registrar granted: `Expires`, else the Contact's `expires` parameter.
fn granted_expires(r: &Response) -> Option<Duration> {
    let secs: u64 = r
        .headers
        .get("expires")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| {
            r.headers
                .get("contact")
                .and_then(|c| sip::param(c, "expires"))
                .and_then(|v| v.parse().ok())
        })?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alarm(priority: u8, method: u8) -> String {
        let t = chrono::DateTime::parse_from_rfc3339("2026-05-01T21:14:03+08:00").unwrap();
        let b = manscdp::alarm_body(
            1,
            "51012400011340000001",
            priority,
            method,
            None,
            t,
            None,
            None,
            "x",
            Charset::Utf8,
        );
        manscdp::decode(&b)
    }

    #[test]
    fn alarm_filters_take_a_priority_range_and_method_digits() {
        let f = |q: &str| AlarmFilter::from_query(&format!("<Query>{q}</Query>"));
        let any = f("<StartAlarmPriority>0</StartAlarmPriority><AlarmMethod>0</AlarmMethod>");
        assert!(any.admits(&alarm(1, 2)) && any.admits(&alarm(4, 5)));
        assert!(f("").admits(&alarm(3, 5)), "no filter admits all");

        let urgent = f("<StartAlarmPriority>1</StartAlarmPriority>\
                        <EndAlarmPriority>2</EndAlarmPriority><AlarmMethod>0</AlarmMethod>");
        assert!(urgent.admits(&alarm(1, 5)) && urgent.admits(&alarm(2, 2)));
        assert!(!urgent.admits(&alarm(3, 2)));

        let video = f("<AlarmMethod>56</AlarmMethod>");
        assert!(video.admits(&alarm(1, 5)) && video.admits(&alarm(4, 6)));
        assert!(!video.admits(&alarm(1, 2)), "a panic button is method 2");
    }
}
