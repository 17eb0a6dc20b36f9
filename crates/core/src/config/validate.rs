//! Whole-file validation. Every check pushes `(key path, message)` and carries on, so one run of
//! `check-config` lists every problem. Secrets are resolved here too, so a missing secret file is
//! reported like any other mistake.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::load::Env;
use super::path::KeyPath;
use super::{BridgeMqttConfig, Config, MqttMode, Secret};
use crate::id::check_slug;

type Problems = Vec<(KeyPath, String)>;

pub(super) fn validate(cfg: &mut Config, env: &dyn Env, base: &Path, out: &mut Problems) {
    let root = KeyPath::root();
    node(cfg, &root.key("node"), out);
    database(cfg, env, base, &root.key("database"), out);
    mqtt(cfg, env, base, &root.key("mqtt"), out);
    storage(cfg, &root.key("storage"), out);
    alarms(&cfg.alarms, &root.key("alarms"), out);
    let camera_ids = cameras(cfg, env, base, out);
    devices(cfg, env, base, &camera_ids, out);
    api(cfg, env, base, &camera_ids, out);
    bridge(cfg, env, base, out);
}

fn node(cfg: &Config, p: &KeyPath, out: &mut Problems) {
    if let Err(e) = check_slug(&cfg.node.id) {
        out.push((p.key("id"), e));
    }
    if cfg.node.data_dir.as_os_str().is_empty() {
        out.push((p.key("data_dir"), "must not be empty".into()));
    }
    if !(1..=300).contains(&cfg.node.shutdown_timeout_seconds) {
        out.push((
            p.key("shutdown_timeout_seconds"),
            "must be between 1 and 300".into(),
        ));
    }
}

/// Env var name for a per-item secret: `XUELIANG_CAMERA_GATE_01_PASSWORD` for camera `gate-01`.
pub(crate) fn env_name(kind: &str, id: &str, what: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() {
        format!("XUELIANG_{kind}_{what}")
    } else {
        format!("XUELIANG_{kind}_{id}_{what}")
    }
}

/// Resolves a secret from (in order of precedence) the environment, the `*_file` key or the
/// inline key. Setting both the inline and the file key is a mistake worth reporting.
#[allow(clippy::too_many_arguments)]
fn secret(
    inline: &mut Option<Secret>,
    file: &Option<PathBuf>,
    env_var: &str,
    env: &dyn Env,
    base: &Path,
    p: &KeyPath,
    names: (&str, &str),
    out: &mut Problems,
) {
    if inline.is_some() && file.is_some() {
        out.push((
            p.key(names.1),
            format!("set either {} or {}, not both", names.0, names.1),
        ));
    }
    if let Some(v) = env.var(env_var) {
        *inline = Some(Secret::new(v));
        return;
    }
    if let Some(f) = file {
        let full = if f.is_absolute() {
            f.clone()
        } else {
            base.join(f)
        };
        match std::fs::read_to_string(&full) {
            Ok(s) => {
                let s = s.trim_end_matches(['\n', '\r']).to_owned();
                if s.is_empty() {
                    out.push((p.key(names.1), format!("{} is empty", full.display())));
                }
                *inline = Some(Secret::new(s));
            }
            Err(e) => out.push((
                p.key(names.1),
                format!("cannot read {}: {e}", full.display()),
            )),
        }
    }
}

fn database(cfg: &mut Config, env: &dyn Env, base: &Path, p: &KeyPath, out: &mut Problems) {
    let db = &mut cfg.database;
    if let Some(u) = env.var("XUELIANG_DATABASE_URL") {
        db.url = Some(u);
    }
    secret(
        &mut db.password,
        &db.password_file,
        "XUELIANG_DATABASE_PASSWORD",
        env,
        base,
        p,
        ("password", "password_file"),
        out,
    );
    if let Some(u) = &db.url {
        if u.starts_with("sqlite:") {
            if db.password.is_some() {
                out.push((p.key("password"), "SQLite takes no password".into()));
            }
        } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            match url::Url::parse(u) {
                Ok(parsed) if parsed.password().is_some() => out.push((
                    p.key("url"),
                    "credentials must not be in the URL; use password_file or XUELIANG_DATABASE_PASSWORD".into(),
                )),
                Ok(parsed) if parsed.host_str().unwrap_or_default().is_empty() => {
                    out.push((p.key("url"), "has no host".into()))
                }
                Ok(_) => {}
                Err(e) => out.push((p.key("url"), format!("is not a URL: {e}"))),
            }
        } else {
            out.push((
                p.key("url"),
                "must start with sqlite:// or postgres://".into(),
            ));
        }
    }
    if !(1..=200).contains(&db.max_connections) {
        out.push((p.key("max_connections"), "must be between 1 and 200".into()));
    }
}

fn url_without_credentials(
    u: &str,
    schemes: &[&str],
    p: &KeyPath,
    hint: &str,
    out: &mut Problems,
) -> Option<url::Url> {
    match url::Url::parse(u) {
        Ok(parsed) => {
            if !schemes.contains(&parsed.scheme()) {
                out.push((
                    p.clone(),
                    format!(
                        "scheme must be one of {}, got {:?}",
                        schemes.join(", "),
                        parsed.scheme()
                    ),
                ));
                return None;
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                out.push((
                    p.clone(),
                    format!("credentials must not be in the URL; {hint}"),
                ));
                return None;
            }
            if parsed.host_str().unwrap_or_default().is_empty() {
                out.push((p.clone(), "has no host".into()));
                return None;
            }
            Some(parsed)
        }
        Err(e) => {
            out.push((p.clone(), format!("is not a URL: {e}")));
            None
        }
    }
}

fn mqtt(cfg: &mut Config, env: &dyn Env, base: &Path, p: &KeyPath, out: &mut Problems) {
    let m = &mut cfg.mqtt;
    match m.mode {
        MqttMode::Embedded => {
            if m.url.is_some() {
                out.push((
                    p.key("url"),
                    "is for mode = \"external\"; the embedded broker uses listen".into(),
                ));
            }
            if let Some(l) = &m.listen
                && l.parse::<SocketAddr>().is_err()
            {
                out.push((
                    p.key("listen"),
                    format!("{l:?} is not an address such as 0.0.0.0:1883"),
                ));
            }
        }
        MqttMode::External => {
            if m.listen.is_some() {
                out.push((
                    p.key("listen"),
                    "is for mode = \"embedded\"; an external broker uses url".into(),
                ));
            }
            match &m.url {
                None => out.push((p.key("url"), "is required when mode = \"external\"".into())),
                Some(u) => {
                    url_without_credentials(
                        u,
                        &["mqtt", "tcp"],
                        &p.key("url"),
                        "use username and password_file",
                        out,
                    );
                }
            }
        }
    }
    secret(
        &mut m.password,
        &m.password_file,
        "XUELIANG_MQTT_PASSWORD",
        env,
        base,
        p,
        ("password", "password_file"),
        out,
    );
    if m.password.is_some() && m.username.is_none() {
        out.push((
            p.key("username"),
            "is required when a password is set".into(),
        ));
    }
    if !(5..=3600).contains(&m.keepalive_seconds) {
        out.push((
            p.key("keepalive_seconds"),
            "must be between 5 and 3600".into(),
        ));
    }
}

fn alarms(a: &super::AlarmsConfig, p: &KeyPath, out: &mut Problems) {
    for (key, v) in [
        ("join_seconds", a.join_seconds),
        ("burst_seconds", a.burst_seconds),
        ("ack_timeout_seconds", a.ack_timeout_seconds),
        ("heartbeat_seconds", a.heartbeat_seconds),
        ("missed_heartbeats", a.missed_heartbeats),
        ("footage_max_seconds", a.footage_max_seconds),
        ("events_keep_days", a.events_keep_days),
    ] {
        if v == 0 {
            out.push((p.key(key), "must be at least 1".into()));
        }
    }
    for (key, h) in [
        ("night_start_hour", a.night_start_hour),
        ("night_end_hour", a.night_end_hour),
    ] {
        if h > 23 {
            out.push((p.key(key), format!("{h} is not an hour (0-23)")));
        }
    }
    if a.utc_offset_minutes.abs() > 14 * 60 {
        out.push((
            p.key("utc_offset_minutes"),
            format!("{} is not a UTC offset (-840 to 840)", a.utc_offset_minutes),
        ));
    }
    if a.burst_presses < 2 {
        out.push((p.key("burst_presses"), "must be at least 2".into()));
    }
    if a.low_battery_percent > 100 {
        out.push((
            p.key("low_battery_percent"),
            "is a percentage (0-100)".into(),
        ));
    }
    if a.footage_pre_seconds + a.footage_post_seconds > a.footage_max_seconds {
        out.push((
            p.key("footage_max_seconds"),
            format!(
                "{} is shorter than footage_pre_seconds + footage_post_seconds ({})",
                a.footage_max_seconds,
                a.footage_pre_seconds + a.footage_post_seconds
            ),
        ));
    }
}

fn storage(cfg: &Config, p: &KeyPath, out: &mut Problems) {
    let s = &cfg.storage;
    if !(10..=600).contains(&s.segment_seconds) {
        out.push((
            p.key("segment_seconds"),
            "must be between 10 and 600".into(),
        ));
    }
    if s.rpo_seconds == 0 || s.rpo_seconds > s.segment_seconds {
        out.push((
            p.key("rpo_seconds"),
            "must be at least 1 and at most segment_seconds".into(),
        ));
    }
    if !(1..=3650).contains(&s.retention_days) {
        out.push((p.key("retention_days"), "must be between 1 and 3650".into()));
    }
    if let Some(m) = s.max_bytes
        && m.0 < (1 << 30)
    {
        out.push((p.key("max_bytes"), "must be at least 1 GiB".into()));
    }
}

fn check_polygon(poly: &[[f64; 2]], p: &KeyPath, out: &mut Problems) {
    if poly.len() < 3 {
        out.push((
            p.clone(),
            format!("a polygon needs at least 3 points, got {}", poly.len()),
        ));
    }
    if let Some((i, _)) = poly
        .iter()
        .enumerate()
        .find(|(_, [x, y])| !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y))
    {
        out.push((
            p.index(i),
            "coordinates are fractions of the frame, between 0 and 1".into(),
        ));
    }
}

fn cameras(cfg: &mut Config, env: &dyn Env, base: &Path, out: &mut Problems) -> HashSet<String> {
    let mut ids = HashSet::new();
    let root = KeyPath::root().key("cameras");
    for (i, c) in cfg.cameras.iter_mut().enumerate() {
        let p = root.index(i);
        match check_slug(&c.id) {
            Err(e) => out.push((p.key("id"), e)),
            Ok(()) => {
                if !ids.insert(c.id.clone()) {
                    out.push((p.key("id"), format!("{:?} is used by another camera", c.id)));
                }
            }
        }
        let hint = "use username/password";
        url_without_credentials(&c.url, &["rtsp", "rtsps"], &p.key("url"), hint, out);
        if let Some(u) = &c.sub_url {
            url_without_credentials(u, &["rtsp", "rtsps"], &p.key("sub_url"), hint, out);
        }
        secret(
            &mut c.password,
            &c.password_file,
            &env_name("CAMERA", &c.id, "PASSWORD"),
            env,
            base,
            &p,
            ("password", "password_file"),
            out,
        );
        if c.password.is_some() && c.username.is_none() {
            out.push((
                p.key("username"),
                "is required when a password is set".into(),
            ));
        }
        if c.retention_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            out.push((p.key("retention_days"), "must be between 1 and 3650".into()));
        }
        if !(2..=300).contains(&c.stall_seconds) {
            out.push((p.key("stall_seconds"), "must be between 2 and 300".into()));
        }
        let m = p.key("motion");
        if !(1..=30).contains(&c.motion.analysis_fps) {
            out.push((m.key("analysis_fps"), "must be between 1 and 30".into()));
        }
        if !(1..=600).contains(&c.motion.cooldown_seconds) {
            out.push((
                m.key("cooldown_seconds"),
                "must be between 1 and 600".into(),
            ));
        }
        let mut zone_names = HashSet::new();
        for (z, zone) in c.motion.zones.iter().enumerate() {
            let zp = m.key("zones").index(z);
            if zone.name.trim().is_empty() {
                out.push((zp.key("name"), "must not be empty".into()));
            } else if !zone_names.insert(zone.name.clone()) {
                out.push((
                    zp.key("name"),
                    format!("{:?} is used by another zone", zone.name),
                ));
            }
            check_polygon(&zone.polygon, &zp.key("polygon"), out);
            if !(0.0..=1.0).contains(&zone.sensitivity) {
                out.push((zp.key("sensitivity"), "must be between 0 and 1".into()));
            }
        }
        for (k, mask) in c.motion.masks.iter().enumerate() {
            check_polygon(mask, &m.key("masks").index(k), out);
        }
    }
    ids
}

fn devices(
    cfg: &mut Config,
    env: &dyn Env,
    base: &Path,
    camera_ids: &HashSet<String>,
    out: &mut Problems,
) {
    let mut ids = HashSet::new();
    let root = KeyPath::root().key("devices");
    for (i, d) in cfg.devices.iter_mut().enumerate() {
        let p = root.index(i);
        match check_slug(&d.id) {
            Err(e) => out.push((p.key("id"), e)),
            Ok(()) => {
                if !ids.insert(d.id.clone()) {
                    out.push((p.key("id"), format!("{:?} is used by another device", d.id)));
                }
            }
        }
        if let Some(l) = d.location {
            if !(-90.0..=90.0).contains(&l.lat) {
                out.push((
                    p.key("location").key("lat"),
                    "must be between -90 and 90".into(),
                ));
            }
            if !(-180.0..=180.0).contains(&l.lon) {
                out.push((
                    p.key("location").key("lon"),
                    "must be between -180 and 180".into(),
                ));
            }
        }
        for (k, cam) in d.cameras.iter().enumerate() {
            if !camera_ids.contains(cam) {
                out.push((
                    p.key("cameras").index(k),
                    format!("no camera has id {cam:?}"),
                ));
            }
        }
        secret(
            &mut d.password,
            &d.password_file,
            &env_name("DEVICE", &d.id, "PASSWORD"),
            env,
            base,
            &p,
            ("password", "password_file"),
            out,
        );
        if d.password.is_some() && d.username.is_none() {
            out.push((
                p.key("username"),
                "is required when a password is set".into(),
            ));
        }
    }
}

fn scope(
    list: &[String],
    known: Option<&HashSet<String>>,
    what: &str,
    p: &KeyPath,
    out: &mut Problems,
) {
    if list.is_empty() {
        out.push((p.clone(), format!("lists no {what}s; use [\"*\"] for all")));
    }
    for (k, id) in list.iter().enumerate() {
        if id == "*" {
            continue;
        }
        if let Some(known) = known
            && !known.contains(id)
        {
            out.push((p.index(k), format!("no {what} has id {id:?}")));
        }
    }
}

fn api(
    cfg: &mut Config,
    env: &dyn Env,
    base: &Path,
    camera_ids: &HashSet<String>,
    out: &mut Problems,
) {
    let p = KeyPath::root().key("api");
    if cfg.api.listen.parse::<SocketAddr>().is_err() {
        out.push((
            p.key("listen"),
            format!(
                "{:?} is not an address such as 127.0.0.1:8080",
                cfg.api.listen
            ),
        ));
    }
    if !(1..=7 * 24 * 60).contains(&cfg.api.session_idle_minutes) {
        out.push((
            p.key("session_idle_minutes"),
            "must be between 1 and 10080 (a week)".into(),
        ));
    }
    if let Some(tls) = &mut cfg.api.tls {
        let tp = p.key("tls");
        for (key, file) in [
            ("cert_file", &mut tls.cert_file),
            ("key_file", &mut tls.key_file),
        ] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
            let want = if key == "key_file" {
                Pem::PrivateKey
            } else {
                Pem::Certificates
            };
            if let Err(e) = check_pem(file, want) {
                out.push((tp.key(key), e));
            }
        }
    }
    let device_ids: HashSet<String> = cfg.devices.iter().map(|d| d.id.clone()).collect();
    let mut names = HashSet::new();
    let mut seen_tokens = HashSet::new();
    for (i, t) in cfg.api.tokens.iter_mut().enumerate() {
        let tp = p.key("tokens").index(i);
        match check_slug(&t.name) {
            Err(e) => out.push((tp.key("name"), e)),
            Ok(()) => {
                if !names.insert(t.name.clone()) {
                    out.push((
                        tp.key("name"),
                        format!("{:?} is used by another token", t.name),
                    ));
                }
            }
        }
        secret(
            &mut t.token,
            &t.token_file,
            &env_name("TOKEN", &t.name, "VALUE"),
            env,
            base,
            &tp,
            ("token", "token_file"),
            out,
        );
        match &t.token {
            None => out.push((
                tp.key("token"),
                format!(
                    "missing: set token, token_file or {}",
                    env_name("TOKEN", &t.name, "VALUE")
                ),
            )),
            Some(s) if s.expose().chars().count() < 16 => out.push((
                tp.key("token"),
                "must be at least 16 characters; generate one with `openssl rand -hex 24`".into(),
            )),
            Some(s) => {
                if !seen_tokens.insert(s.expose().to_owned()) {
                    out.push((tp.key("token"), "is the same as another token's".into()));
                }
            }
        }
        scope(
            &t.cameras,
            Some(camera_ids),
            "camera",
            &tp.key("cameras"),
            out,
        );
        scope(
            &t.devices,
            Some(&device_ids),
            "device",
            &tp.key("devices"),
            out,
        );
    }
}

/// `[bridge.mqtt]`'s TLS files: only with `mqtts://`, the client pair together, each file
/// readable PEM holding what its key says.
fn bridge_mqtt_tls(m: &mut BridgeMqttConfig, base: &Path, mp: &KeyPath, out: &mut Problems) {
    let tls = m.is_tls();
    let (has_cert, has_key) = (m.client_cert_file.is_some(), m.client_key_file.is_some());
    if has_cert != has_key {
        let (set, missing) = if has_cert {
            ("client_cert_file", "client_key_file")
        } else {
            ("client_key_file", "client_cert_file")
        };
        out.push((mp.key(missing), format!("is required when {set} is set")));
    }
    for (key, file, want) in [
        ("ca_file", &mut m.ca_file, Pem::Certificates),
        (
            "client_cert_file",
            &mut m.client_cert_file,
            Pem::Certificates,
        ),
        ("client_key_file", &mut m.client_key_file, Pem::PrivateKey),
    ] {
        let Some(file) = file else { continue };
        if !tls {
            out.push((
                mp.key(key),
                "is for TLS: set url to mqtts://host:8883 or remove it".into(),
            ));
            continue;
        }
        if file.is_relative() {
            *file = base.join(&*file);
        }
        if let Err(e) = check_pem(file, want) {
            out.push((mp.key(key), e));
        }
    }
}

/// What a PEM file must hold.
#[derive(Copy, Clone, Debug)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Reads `file` and checks it holds at least one certificate, or a private key.
fn check_pem(file: &Path, want: Pem) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    match want {
        Pem::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: not PEM certificates: {e}", file.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "{}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
                    file.display()
                ));
            }
        }
        Pem::PrivateKey => {
            PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                format!(
                    "{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
                    file.display()
                )
            })?;
        }
    }
    Ok(())
}

fn is_gb_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

fn bridge(cfg: &mut Config, env: &dyn Env, base: &Path, out: &mut Problems) {
    let p = KeyPath::root().key("bridge");
    if let Some(m) = cfg.bridge.mqtt.as_mut() {
        let mp = p.key("mqtt");
        url_without_credentials(
            &m.url,
            &["mqtt", "tcp", "mqtts", "ssl"],
            &mp.key("url"),
            "use username and password_file",
            out,
        );
        bridge_mqtt_tls(m, base, &mp, out);
        let t = &m.topic_prefix;
        if t.is_empty() || t.starts_with('/') || t.ends_with('/') || t.contains(['+', '#']) {
            out.push((
                mp.key("topic_prefix"),
                "must be non-empty, without wildcards (+, #) or a leading or trailing '/'".into(),
            ));
        }
        secret(
            &mut m.password,
            &m.password_file,
            "XUELIANG_BRIDGE_MQTT_PASSWORD",
            env,
            base,
            &mp,
            ("password", "password_file"),
            out,
        );
    }
    if let Some(g) = cfg.bridge.gb28181.as_mut() {
        let gp = p.key("gb28181");
        for (k, v) in [("local_id", &g.local_id), ("server_id", &g.server_id)] {
            if !is_gb_id(v, 20) {
                out.push((gp.key(k), format!("{v:?} must be a 20-digit GB/T 28181 id")));
            }
        }
        if !is_gb_id(&g.server_domain, 10) {
            out.push((
                gp.key("server_domain"),
                format!(
                    "{:?} must be the 10-digit domain (the first 10 digits of server_id)",
                    g.server_domain
                ),
            ));
        } else if is_gb_id(&g.server_id, 20) && !g.server_id.starts_with(&g.server_domain) {
            out.push((
                gp.key("server_domain"),
                "must be the first 10 digits of server_id".into(),
            ));
        }
        if g.local_listen.parse::<SocketAddr>().is_err() {
            out.push((
                gp.key("local_listen"),
                format!(
                    "{:?} is not an address such as 0.0.0.0:5060",
                    g.local_listen
                ),
            ));
        }
        match g.server_addr.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => out.push((
                gp.key("server_addr"),
                format!("{:?} is not host:port", g.server_addr),
            )),
        }
        if !(60..=86400).contains(&g.register_expires_seconds) {
            out.push((
                gp.key("register_expires_seconds"),
                "must be between 60 and 86400".into(),
            ));
        }
        if !(5..=3600).contains(&g.keepalive_seconds) {
            out.push((
                gp.key("keepalive_seconds"),
                "must be between 5 and 3600".into(),
            ));
        }
        secret(
            &mut g.password,
            &g.password_file,
            "XUELIANG_GB28181_PASSWORD",
            env,
            base,
            &gp,
            ("password", "password_file"),
            out,
        );
        if g.password.is_none() && g.password_file.is_none() {
            out.push((
                gp.key("password"),
                "is required: the upper platform authenticates REGISTER with a digest \
                 (password, password_file or XUELIANG_GB28181_PASSWORD)"
                    .into(),
            ));
        }
    }
}
