// Query code shared by both backends. Included by `sqlite.rs` and `postgres.rs`, which define
// `Db`, `BACKEND`, `StoreImpl`, `MIGRATIONS` and `migrate_impl`. One SQL text serves both
// engines: `$N` parameters, integer milliseconds, `CAST(.. AS ..)` instead of `::`.

use async_trait::async_trait;
use sqlx::Row as _;
use xueliang_core::model::{CameraState, Condition, IncidentState, Outcome, SignalSource};
use xueliang_core::{EntityId, Timestamp};

use crate::error::db;
use crate::model::*;

type DbRow = <Db as sqlx::Database>::Row;

fn col<'r, T>(row: &'r DbRow, name: &'static str) -> Result<T>
where
    T: sqlx::Decode<'r, Db> + sqlx::Type<Db>,
{
    row.try_get::<T, _>(name).map_err(db("decode column"))
}

fn ts(row: &DbRow, name: &'static str) -> Result<Timestamp> {
    Ok(Timestamp::from_millis(col::<i64>(row, name)?))
}

fn opt_ts(row: &DbRow, name: &'static str) -> Result<Option<Timestamp>> {
    Ok(col::<Option<i64>>(row, name)?.map(Timestamp::from_millis))
}

fn id(row: &DbRow, name: &'static str) -> Result<EntityId> {
    let s: String = col(row, name)?;
    s.parse().map_err(|e| {
        Error::with_source(
            ErrorKind::DataLoss,
            format!("bad id {s:?} in column {name}"),
            e,
        )
    })
}

fn parsed<T: FromStr<Err = Error>>(row: &DbRow, name: &'static str) -> Result<T> {
    let s: String = col(row, name)?;
    s.parse()
}

fn opt_parsed<T: FromStr<Err = Error>>(row: &DbRow, name: &'static str) -> Result<Option<T>> {
    col::<Option<String>>(row, name)?
        .map(|s| s.parse())
        .transpose()
}

fn json_list(row: &DbRow, name: &'static str) -> Result<Vec<String>> {
    let s: String = col(row, name)?;
    serde_json::from_str(&s).map_err(|e| {
        Error::with_source(ErrorKind::DataLoss, format!("bad list in column {name}"), e)
    })
}

const CAMERA_COLS: &str = "id, node_id, name, state, last_error, state_since_ms, updated_ms";

fn camera(row: &DbRow) -> Result<CameraRecord> {
    Ok(CameraRecord {
        id: col(row, "id")?,
        node_id: col(row, "node_id")?,
        name: col(row, "name")?,
        state: parsed::<CameraState>(row, "state")?,
        last_error: col(row, "last_error")?,
        state_since: ts(row, "state_since_ms")?,
        updated_at: ts(row, "updated_ms")?,
    })
}

fn segment(row: &DbRow) -> Result<Segment> {
    Ok(Segment {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        camera_id: col(row, "camera_id")?,
        stream: col(row, "stream")?,
        start: ts(row, "start_ms")?,
        end: ts(row, "end_ms")?,
        bytes: col(row, "bytes")?,
        frames: col(row, "frames")?,
        path: col(row, "path")?,
        sha256: col(row, "sha256")?,
        pinned_until: opt_ts(row, "pinned_until_ms")?,
        created_at: ts(row, "created_ms")?,
    })
}

fn gap(row: &DbRow) -> Result<Gap> {
    Ok(Gap {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        camera_id: col(row, "camera_id")?,
        start: ts(row, "start_ms")?,
        end: opt_ts(row, "end_ms")?,
        reason: col(row, "reason")?,
        created_at: ts(row, "created_ms")?,
    })
}

const SIGNAL_COLS: &str =
    "id, node_id, source, source_id, seq, kind, device_ts_ms, received_ms, payload";

fn signal(row: &DbRow) -> Result<Signal> {
    Ok(Signal {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        source: parsed::<SignalSource>(row, "source")?,
        source_id: col(row, "source_id")?,
        seq: col(row, "seq")?,
        kind: col(row, "kind")?,
        device_ts: opt_ts(row, "device_ts_ms")?,
        received_at: ts(row, "received_ms")?,
        payload: col(row, "payload")?,
    })
}

const INCIDENT_COLS: &str = "id, node_id, kind, source_id, priority, condition, state, outcome, \
     title, lat, lon, opened_ms, updated_ms, resolved_ms, escalation_level, signal_count, version";

fn incident(row: &DbRow) -> Result<Incident> {
    Ok(Incident {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        kind: col(row, "kind")?,
        source_id: col(row, "source_id")?,
        priority: col(row, "priority")?,
        condition: parsed::<Condition>(row, "condition")?,
        state: parsed::<IncidentState>(row, "state")?,
        outcome: opt_parsed::<Outcome>(row, "outcome")?,
        title: col(row, "title")?,
        lat: col(row, "lat")?,
        lon: col(row, "lon")?,
        opened_at: ts(row, "opened_ms")?,
        updated_at: ts(row, "updated_ms")?,
        resolved_at: opt_ts(row, "resolved_ms")?,
        escalation_level: col(row, "escalation_level")?,
        signal_count: col(row, "signal_count")?,
        version: col(row, "version")?,
    })
}

fn change(row: &DbRow) -> Result<IncidentChange> {
    Ok(IncidentChange {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        incident_id: id(row, "incident_id")?,
        at: ts(row, "at_ms")?,
        actor: col(row, "actor")?,
        from_state: opt_parsed::<IncidentState>(row, "from_state")?,
        to_state: parsed::<IncidentState>(row, "to_state")?,
        outcome: opt_parsed::<Outcome>(row, "outcome")?,
        note: col(row, "note")?,
    })
}

const OUTBOX_COLS: &str = "id, node_id, sink, channel, priority, created_ms, payload, attempts, \
     next_attempt_ms, last_error, delivered_ms, expired_ms";

fn outbox(row: &DbRow) -> Result<OutboxEntry> {
    Ok(OutboxEntry {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        sink: col(row, "sink")?,
        channel: col(row, "channel")?,
        priority: col(row, "priority")?,
        created_at: ts(row, "created_ms")?,
        payload: col(row, "payload")?,
        attempts: col(row, "attempts")?,
        next_attempt: ts(row, "next_attempt_ms")?,
        last_error: col(row, "last_error")?,
        delivered_at: opt_ts(row, "delivered_ms")?,
        expired_at: opt_ts(row, "expired_ms")?,
    })
}

const OUTBOX_COLS_O: &str = "o.id, o.node_id, o.sink, o.channel, o.priority, o.created_ms, \
     o.payload, o.attempts, o.next_attempt_ms, o.last_error, o.delivered_ms, o.expired_ms";

fn expired_outbox(row: &DbRow) -> Result<ExpiredOutbox> {
    Ok(ExpiredOutbox {
        id: id(row, "id")?,
        channel: col(row, "channel")?,
        priority: col(row, "priority")?,
        created_at: ts(row, "created_ms")?,
        attempts: col(row, "attempts")?,
        bytes: col(row, "bytes")?,
    })
}

fn audit(row: &DbRow) -> Result<AuditEntry> {
    let kind: String = col(row, "actor_kind")?;
    let actor_kind = match kind.as_str() {
        "user" => ActorKind::User,
        "token" => ActorKind::Token,
        "system" => ActorKind::System,
        other => {
            return Err(Error::new(
                ErrorKind::DataLoss,
                format!("bad actor_kind {other:?}"),
            ));
        }
    };
    Ok(AuditEntry {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        at: ts(row, "at_ms")?,
        actor: col(row, "actor")?,
        actor_kind,
        action: col(row, "action")?,
        target: col(row, "target")?,
        detail: col(row, "detail")?,
        remote_addr: col(row, "remote_addr")?,
    })
}

fn api_token(row: &DbRow) -> Result<ApiToken> {
    let role: String = col(row, "role")?;
    let role = match role.as_str() {
        "admin" => xueliang_core::config::Role::Admin,
        "operator" => xueliang_core::config::Role::Operator,
        "duty" => xueliang_core::config::Role::Duty,
        "viewer" => xueliang_core::config::Role::Viewer,
        other => {
            return Err(Error::new(
                ErrorKind::DataLoss,
                format!("bad role {other:?}"),
            ));
        }
    };
    Ok(ApiToken {
        name: col(row, "name")?,
        token_sha256: col(row, "token_sha256")?,
        role,
        cameras: json_list(row, "cameras")?,
        devices: json_list(row, "devices")?,
        last_used: opt_ts(row, "last_used_ms")?,
    })
}

fn json_text(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

fn role_text(s: &str) -> Result<xueliang_core::config::Role> {
    use xueliang_core::config::Role;
    match s {
        "admin" => Ok(Role::Admin),
        "operator" => Ok(Role::Operator),
        "duty" => Ok(Role::Duty),
        "viewer" => Ok(Role::Viewer),
        other => Err(Error::new(
            ErrorKind::DataLoss,
            format!("bad role {other:?}"),
        )),
    }
}

const USER_COLS: &str =
    "id, username, password_hash, role, cameras, devices, disabled, created_ms, updated_ms";

fn user(row: &DbRow) -> Result<UserRecord> {
    let role: String = col(row, "role")?;
    Ok(UserRecord {
        id: id(row, "id")?,
        username: col(row, "username")?,
        password_hash: col(row, "password_hash")?,
        role: role_text(&role)?,
        cameras: json_list(row, "cameras")?,
        devices: json_list(row, "devices")?,
        disabled: col(row, "disabled")?,
        created_at: ts(row, "created_ms")?,
        updated_at: ts(row, "updated_ms")?,
    })
}

const SESSION_COLS: &str = "id, user_id, csrf, created_ms, expires_ms, last_seen_ms, remote_addr";

fn session(row: &DbRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id: col(row, "id")?,
        user_id: id(row, "user_id")?,
        csrf: col(row, "csrf")?,
        created_at: ts(row, "created_ms")?,
        expires_at: ts(row, "expires_ms")?,
        last_seen: ts(row, "last_seen_ms")?,
        remote_addr: col(row, "remote_addr")?,
    })
}

/// `NotFound` naming the user when an update touched no row.
fn user_changed(rows: u64, username: &str) -> Result<()> {
    if rows == 0 {
        Err(Error::new(
            ErrorKind::NotFound,
            format!("no user {username:?}"),
        ))
    } else {
        Ok(())
    }
}

async fn apply_pending(
    conn: &mut sqlx::pool::PoolConnection<Db>,
    known: &[crate::Migration],
) -> Result<Vec<i64>> {
    use sqlx::Executor;
    let rows = sqlx::query("SELECT version, checksum FROM schema_migrations ORDER BY version")
        .fetch_all(&mut **conn)
        .await
        .map_err(db("read schema_migrations"))?;
    let applied = rows
        .iter()
        .map(|r| Ok((col::<i64>(r, "version")?, col::<String>(r, "checksum")?)))
        .collect::<Result<Vec<_>>>()?;
    let mut done = Vec::new();
    for m in crate::migrate::plan(&applied, known)? {
        conn.execute(m.sql).await.map_err(|e| {
            Error::with_source(
                ErrorKind::Internal,
                format!("migration {} ({}) failed", m.version, m.description),
                e,
            )
        })?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, checksum, applied_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(m.version)
        .bind(m.description)
        .bind(m.checksum())
        .bind(xueliang_core::Clock::now(&xueliang_core::SystemClock).as_millis())
        .execute(&mut **conn)
        .await
        .map_err(db("record migration"))?;
        tracing::info!(
            backend = BACKEND.as_str(),
            version = m.version,
            description = m.description,
            "applied migration"
        );
        done.push(m.version);
    }
    Ok(done)
}

/// Creates the bookkeeping table, then applies what is pending inside one transaction opened
/// with `begin`, committing only if every step succeeded.
async fn migrate_in_transaction(
    conn: &mut sqlx::pool::PoolConnection<Db>,
    begin: &'static str,
) -> Result<Vec<i64>> {
    use sqlx::Executor;
    conn.execute(crate::migrate::CREATE_MIGRATIONS_TABLE)
        .await
        .map_err(db("create schema_migrations"))?;
    conn.execute(begin).await.map_err(db("begin migration"))?;
    let result = apply_pending(conn, MIGRATIONS).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute(end).await.map_err(db("end migration"))?;
    result
}

async fn insert_outbox(tx: &mut sqlx::Transaction<'_, Db>, entries: &[OutboxEntry]) -> Result<()> {
    for e in entries {
        sqlx::query(
            "INSERT INTO outbox (id, node_id, sink, channel, priority, created_ms, payload, attempts, \
             next_attempt_ms, last_error, delivered_ms, expired_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(e.id.to_string())
        .bind(&e.node_id)
        .bind(&e.sink)
        .bind(&e.channel)
        .bind(e.priority)
        .bind(e.created_at.as_millis())
        .bind(&e.payload)
        .bind(e.attempts)
        .bind(e.next_attempt.as_millis())
        .bind(&e.last_error)
        .bind(e.delivered_at.map(Timestamp::as_millis))
        .bind(e.expired_at.map(Timestamp::as_millis))
        .execute(&mut **tx)
        .await
        .map_err(db("insert outbox entry"))?;
    }
    Ok(())
}

async fn insert_change(tx: &mut sqlx::Transaction<'_, Db>, c: &IncidentChange) -> Result<()> {
    sqlx::query(
        "INSERT INTO incident_changes (id, node_id, incident_id, at_ms, actor, from_state, to_state, outcome, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.id.to_string())
    .bind(&c.node_id)
    .bind(c.incident_id.to_string())
    .bind(c.at.as_millis())
    .bind(&c.actor)
    .bind(c.from_state.map(|s| s.as_str()))
    .bind(c.to_state.as_str())
    .bind(c.outcome.map(|o| o.as_str()))
    .bind(&c.note)
    .execute(&mut **tx)
    .await
    .map_err(db("insert incident change"))?;
    Ok(())
}

/// `($1, $2, ...), ($k+1, ...)`: placeholders for `rows` rows of `cols` values.
fn value_rows(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(r * cols + c + 1).to_string());
        }
        s.push(')');
    }
    s
}

/// Rows per multi-row statement: far below both engines' parameter limits.
const ROWS_PER_STATEMENT: usize = 200;

async fn link_signals(
    tx: &mut sqlx::Transaction<'_, Db>,
    incident: EntityId,
    signals: &[EntityId],
) -> Result<()> {
    let incident = incident.to_string();
    for chunk in signals.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO incident_signals (incident_id, signal_id) VALUES {} ON CONFLICT DO NOTHING",
            value_rows(chunk.len(), 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q.bind(incident.clone()).bind(s.to_string());
        }
        q.execute(&mut **tx)
            .await
            .map_err(db("link signals to incident"))?;
    }
    Ok(())
}

/// Inserts signals with one statement per chunk and reads back, per (source, id, seq), which
/// row is stored: ours (inserted) or an earlier one (a duplicate, possibly earlier in the
/// same batch).
async fn insert_signals_tx(
    tx: &mut sqlx::Transaction<'_, Db>,
    signals: &[Signal],
) -> Result<Vec<SignalInsert>> {
    let mut out = Vec::with_capacity(signals.len());
    for chunk in signals.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO alarm_signals (id, node_id, source, source_id, seq, kind, device_ts_ms, received_ms, payload) \
             VALUES {} ON CONFLICT (source, source_id, seq) DO NOTHING",
            value_rows(chunk.len(), 9)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in chunk {
            q = q
                .bind(s.id.to_string())
                .bind(&s.node_id)
                .bind(s.source.as_str())
                .bind(&s.source_id)
                .bind(s.seq)
                .bind(&s.kind)
                .bind(s.device_ts.map(Timestamp::as_millis))
                .bind(s.received_at.as_millis())
                .bind(&s.payload);
        }
        q.execute(&mut **tx).await.map_err(db("insert signals"))?;
        let keyed: Vec<&Signal> = chunk.iter().filter(|s| s.seq.is_some()).collect();
        let mut stored = std::collections::HashMap::new();
        if !keyed.is_empty() {
            let sql = format!(
                "SELECT id, source, source_id, seq FROM alarm_signals \
                 WHERE (source, source_id, seq) IN (VALUES {})",
                value_rows(keyed.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in &keyed {
                q = q.bind(s.source.as_str()).bind(&s.source_id).bind(s.seq);
            }
            for r in q
                .fetch_all(&mut **tx)
                .await
                .map_err(db("find stored signals"))?
            {
                let key: (String, String, i64) =
                    (col(&r, "source")?, col(&r, "source_id")?, col(&r, "seq")?);
                stored.insert(key, id(&r, "id")?);
            }
        }
        for s in chunk {
            let Some(seq) = s.seq else {
                out.push(SignalInsert::Inserted);
                continue;
            };
            let key = (s.source.as_str().to_owned(), s.source_id.clone(), seq);
            match stored.get(&key) {
                Some(first) if *first == s.id => out.push(SignalInsert::Inserted),
                Some(first) => out.push(SignalInsert::Duplicate(*first)),
                None => {
                    return Err(Error::new(
                        ErrorKind::Internal,
                        format!("signal {} was neither stored nor found", s.id),
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// One report per device, as the sequence of reports adds up to: the latest time, and the
/// latest value of each field that was reported.
fn merge_statuses(statuses: &[DeviceStatus]) -> Vec<DeviceStatus> {
    let mut order: Vec<&str> = Vec::new();
    let mut merged: std::collections::HashMap<&str, DeviceStatus> = Default::default();
    let mut sorted: Vec<&DeviceStatus> = statuses.iter().collect();
    sorted.sort_by_key(|s| s.at);
    for s in sorted {
        let e = merged.entry(&s.device_id).or_insert_with(|| {
            order.push(&s.device_id);
            s.clone()
        });
        e.at = e.at.max(s.at);
        e.online = s.online.or(e.online);
        e.battery = s.battery.or(e.battery);
        e.rssi = s.rssi.or(e.rssi);
    }
    order.into_iter().filter_map(|d| merged.remove(d)).collect()
}

async fn create_incident_tx(tx: &mut sqlx::Transaction<'_, Db>, new: &NewIncident) -> Result<()> {
    let i = &new.incident;
    sqlx::query(
            "INSERT INTO incidents (id, node_id, kind, source_id, priority, condition, state, outcome, title, \
             lat, lon, opened_ms, updated_ms, resolved_ms, escalation_level, signal_count, version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, 1)",
        )
        .bind(i.id.to_string())
        .bind(&i.node_id)
        .bind(&i.kind)
        .bind(&i.source_id)
        .bind(i.priority)
        .bind(i.condition.as_str())
        .bind(i.state.as_str())
        .bind(i.outcome.map(|o| o.as_str()))
        .bind(&i.title)
        .bind(i.lat)
        .bind(i.lon)
        .bind(i.opened_at.as_millis())
        .bind(i.updated_at.as_millis())
        .bind(i.resolved_at.map(Timestamp::as_millis))
        .bind(i.escalation_level)
        .bind(new.signals.len() as i64)
        .execute(&mut **tx)
        .await
        .map_err(db("insert incident"))?;
    insert_change(tx, &new.change).await?;
    link_signals(tx, i.id, &new.signals).await?;
    insert_outbox(tx, &new.outbox).await?;
    Ok(())
}

/// Applies an update if the incident is still at its expected version; `false` when it is not.
async fn update_incident_tx(
    tx: &mut sqlx::Transaction<'_, Db>,
    u: &IncidentUpdate,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE incidents SET state = $1, condition = $2, outcome = $3, priority = $4, \
             escalation_level = $5, updated_ms = $6, \
             resolved_ms = CASE WHEN $1 = 'resolved' THEN COALESCE(resolved_ms, $6) ELSE NULL END, \
             signal_count = signal_count + $7, version = version + 1 \
             WHERE id = $8 AND version = $9",
    )
    .bind(u.state.as_str())
    .bind(u.condition.as_str())
    .bind(u.outcome.map(|o| o.as_str()))
    .bind(u.priority)
    .bind(u.escalation_level)
    .bind(u.at.as_millis())
    .bind(u.add_signals.len() as i64)
    .bind(u.id.to_string())
    .bind(u.expected_version)
    .execute(&mut **tx)
    .await
    .map_err(db("update incident"))?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    if let Some(c) = &u.change {
        insert_change(tx, c).await?;
    }
    link_signals(tx, u.id, &u.add_signals).await?;
    insert_outbox(tx, &u.outbox).await?;
    Ok(true)
}

async fn upsert_clip(tx: &mut sqlx::Transaction<'_, Db>, c: &IncidentClip) -> Result<()> {
    sqlx::query(
        "INSERT INTO incident_clips (incident_id, camera_id, from_ms, to_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (incident_id, camera_id) DO UPDATE SET \
         from_ms = CASE WHEN excluded.from_ms < incident_clips.from_ms THEN excluded.from_ms ELSE incident_clips.from_ms END, \
         to_ms = CASE WHEN excluded.to_ms > incident_clips.to_ms THEN excluded.to_ms ELSE incident_clips.to_ms END",
    )
    .bind(c.incident_id.to_string())
    .bind(&c.camera_id)
    .bind(c.from.as_millis())
    .bind(c.to.as_millis())
    .execute(&mut **tx)
    .await
    .map_err(db("attach clip"))?;
    Ok(())
}

async fn insert_events(tx: &mut sqlx::Transaction<'_, Db>, events: &[EventRecord]) -> Result<()> {
    for e in events {
        sqlx::query(
            "INSERT INTO events (id, node_id, at_ms, topic, subject, payload) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(e.id.to_string())
        .bind(&e.node_id)
        .bind(e.at.as_millis())
        .bind(&e.topic)
        .bind(&e.subject)
        .bind(&e.payload)
        .execute(&mut **tx)
        .await
        .map_err(db("insert event"))?;
    }
    Ok(())
}

async fn upsert_motion(tx: &mut sqlx::Transaction<'_, Db>, m: &MotionRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO motion_events (id, node_id, camera_id, zone, start_ms, end_ms, score, boxes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET end_ms = excluded.end_ms, score = excluded.score, \
         boxes = excluded.boxes",
    )
    .bind(m.id.to_string())
    .bind(&m.node_id)
    .bind(&m.camera_id)
    .bind(&m.zone)
    .bind(m.start.as_millis())
    .bind(m.end.map(Timestamp::as_millis))
    .bind(m.score)
    .bind(&m.boxes)
    .execute(&mut **tx)
    .await
    .map_err(db("store motion event"))?;
    Ok(())
}

fn motion(row: &DbRow) -> Result<MotionRecord> {
    Ok(MotionRecord {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        camera_id: col(row, "camera_id")?,
        zone: col(row, "zone")?,
        start: ts(row, "start_ms")?,
        end: opt_ts(row, "end_ms")?,
        score: col(row, "score")?,
        boxes: col(row, "boxes")?,
    })
}

fn event(row: &DbRow) -> Result<EventRecord> {
    Ok(EventRecord {
        id: id(row, "id")?,
        node_id: col(row, "node_id")?,
        at: ts(row, "at_ms")?,
        topic: col(row, "topic")?,
        subject: col(row, "subject")?,
        payload: col(row, "payload")?,
    })
}

/// Returns whether the device is known (a status never moves a device's news backwards).
async fn device_status_tx(tx: &mut sqlx::Transaction<'_, Db>, s: &DeviceStatus) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE devices SET online = COALESCE($2, online), battery = COALESCE($3, battery), \
         rssi = COALESCE($4, rssi), last_seen_ms = $5, updated_ms = $5 \
         WHERE id = $1 AND (last_seen_ms IS NULL OR last_seen_ms <= $5)",
    )
    .bind(&s.device_id)
    .bind(s.online)
    .bind(s.battery)
    .bind(s.rssi)
    .bind(s.at.as_millis())
    .execute(&mut **tx)
    .await
    .map_err(db("update device status"))?;
    if r.rows_affected() > 0 {
        return Ok(true);
    }
    let exists = sqlx::query("SELECT 1 AS one FROM devices WHERE id = $1")
        .bind(&s.device_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("find device"))?;
    Ok(exists.is_some())
}

struct RunRow {
    id: String,
    start: i64,
    end: i64,
}

fn run_row(r: &DbRow) -> Result<RunRow> {
    Ok(RunRow {
        id: col(r, "id")?,
        start: col(r, "start_ms")?,
        end: col(r, "end_ms")?,
    })
}

/// Inserts a segment and folds it into its camera's runs: it extends the run ending where it
/// starts, the run starting where it ends, merges the two when it fills the hole between them,
/// or starts a run of its own.
async fn insert_segment_tx(tx: &mut sqlx::Transaction<'_, Db>, s: &Segment) -> Result<()> {
    if s.end < s.start {
        return Err(crate::invalid(format!(
            "segment {} ends before it starts",
            s.id
        )));
    }
    let j = crate::RUN_JOIN_MS;
    let (start, end) = (s.start.as_millis(), s.end.as_millis());
    let pred = sqlx::query(
        "SELECT id, start_ms, end_ms FROM recording_runs WHERE camera_id = $1 \
         AND end_ms >= $2 AND end_ms <= $3 AND start_ms <= $4 ORDER BY end_ms DESC LIMIT 1",
    )
    .bind(&s.camera_id)
    .bind(start - j)
    .bind(end)
    .bind(start)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("find preceding run"))?
    .as_ref()
    .map(run_row)
    .transpose()?;
    let succ = sqlx::query(
        "SELECT id, start_ms, end_ms FROM recording_runs WHERE camera_id = $1 \
         AND start_ms >= $2 AND start_ms <= $3 AND end_ms >= $4 ORDER BY start_ms LIMIT 1",
    )
    .bind(&s.camera_id)
    .bind(start)
    .bind(end + j)
    .bind(end)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db("find following run"))?
    .as_ref()
    .map(run_row)
    .transpose()?
    .filter(|r| pred.as_ref().is_none_or(|p| p.id != r.id));
    let add = "segments = segments + 1, bytes = bytes + $3, frames = frames + $4";
    let run_id = match (pred, succ) {
        (Some(p), Some(n)) => {
            sqlx::query(
                "UPDATE recording_runs SET end_ms = $2, \
                 segments = segments + 1 + (SELECT segments FROM recording_runs WHERE id = $5), \
                 bytes = bytes + $3 + (SELECT bytes FROM recording_runs WHERE id = $5), \
                 frames = frames + $4 + (SELECT frames FROM recording_runs WHERE id = $5) WHERE id = $1",
            )
            .bind(&p.id)
            .bind(n.end.max(end))
            .bind(s.bytes)
            .bind(s.frames)
            .bind(&n.id)
            .execute(&mut **tx)
            .await
            .map_err(db("merge runs"))?;
            sqlx::query("UPDATE recording_segments SET run_id = $1 WHERE run_id = $2")
                .bind(&p.id)
                .bind(&n.id)
                .execute(&mut **tx)
                .await
                .map_err(db("move segments to merged run"))?;
            sqlx::query("DELETE FROM recording_runs WHERE id = $1")
                .bind(&n.id)
                .execute(&mut **tx)
                .await
                .map_err(db("delete merged run"))?;
            p.id
        }
        (Some(p), None) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE recording_runs SET end_ms = $2, {add} WHERE id = $1"
            )))
            .bind(&p.id)
            .bind(p.end.max(end))
            .bind(s.bytes)
            .bind(s.frames)
            .execute(&mut **tx)
            .await
            .map_err(db("extend run"))?;
            p.id
        }
        (None, Some(n)) => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE recording_runs SET start_ms = $2, {add} WHERE id = $1"
            )))
            .bind(&n.id)
            .bind(n.start.min(start))
            .bind(s.bytes)
            .bind(s.frames)
            .execute(&mut **tx)
            .await
            .map_err(db("extend run backwards"))?;
            n.id
        }
        (None, None) => {
            let id = EntityId::new_at(s.start).to_string();
            sqlx::query(
                "INSERT INTO recording_runs (id, node_id, camera_id, start_ms, end_ms, segments, bytes, frames) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $7)",
            )
            .bind(&id)
            .bind(&s.node_id)
            .bind(&s.camera_id)
            .bind(start)
            .bind(end)
            .bind(s.bytes)
            .bind(s.frames)
            .execute(&mut **tx)
            .await
            .map_err(db("insert run"))?;
            id
        }
    };
    sqlx::query(
        "INSERT INTO recording_segments (id, node_id, camera_id, run_id, stream, start_ms, end_ms, bytes, frames, \
         path, sha256, pinned_until_ms, created_ms) VALUES ($1, $2, $3, $13, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(s.id.to_string())
    .bind(&s.node_id)
    .bind(&s.camera_id)
    .bind(&s.stream)
    .bind(start)
    .bind(end)
    .bind(s.bytes)
    .bind(s.frames)
    .bind(&s.path)
    .bind(&s.sha256)
    .bind(s.pinned_until.map(Timestamp::as_millis))
    .bind(s.created_at.as_millis())
    .bind(&run_id)
    .execute(&mut **tx)
    .await
    .map_err(db("insert segment"))?;
    Ok(())
}

/// Removes a segment and repairs its run: shrunk at either end, split around a hole in the
/// middle, gone with its last segment.
async fn delete_segment_tx(tx: &mut sqlx::Transaction<'_, Db>, segment_id: EntityId) -> Result<()> {
    let Some(row) = sqlx::query("SELECT run_id FROM recording_segments WHERE id = $1")
        .bind(segment_id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("find segment"))?
    else {
        return Ok(());
    };
    let run_id: String = col(&row, "run_id")?;
    sqlx::query("DELETE FROM recording_segments WHERE id = $1")
        .bind(segment_id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db("delete segment"))?;
    // Rebuild the run from what is left of it: usually one indexed range scan of one run,
    // split wherever the deletion left a hole.
    let rest = sqlx::query("SELECT id, start_ms, end_ms, bytes, frames FROM recording_segments WHERE run_id = $1 ORDER BY start_ms, id")
        .bind(&run_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(db("read run"))?;
    let run = sqlx::query("SELECT node_id, camera_id FROM recording_runs WHERE id = $1")
        .bind(&run_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(db("read run"))?;
    let (node_id, camera_id): (String, String) = (col(&run, "node_id")?, col(&run, "camera_id")?);
    sqlx::query("DELETE FROM recording_runs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM recording_segments WHERE run_id = $1)")
        .bind(&run_id)
        .execute(&mut **tx)
        .await
        .map_err(db("delete empty run"))?;
    // Group into runs.
    let mut groups: Vec<(i64, i64, i64, i64, i64)> = Vec::new(); // start, end, n, bytes, frames
    for r in &rest {
        let (st, en, by, fr): (i64, i64, i64, i64) = (
            col(r, "start_ms")?,
            col(r, "end_ms")?,
            col(r, "bytes")?,
            col(r, "frames")?,
        );
        match groups.last_mut() {
            Some(g) if st - g.1 <= crate::RUN_JOIN_MS => {
                g.1 = g.1.max(en);
                g.2 += 1;
                g.3 += by;
                g.4 += fr;
            }
            _ => groups.push((st, en, 1, by, fr)),
        }
    }
    for (i, g) in groups.iter().enumerate() {
        if i == 0 {
            sqlx::query("UPDATE recording_runs SET start_ms = $2, end_ms = $3, segments = $4, bytes = $5, frames = $6 WHERE id = $1")
                .bind(&run_id)
                .bind(g.0)
                .bind(g.1)
                .bind(g.2)
                .bind(g.3)
                .bind(g.4)
                .execute(&mut **tx)
                .await
                .map_err(db("update run"))?;
            continue;
        }
        let id = EntityId::new_at(Timestamp::from_millis(g.0)).to_string();
        sqlx::query(
            "INSERT INTO recording_runs (id, node_id, camera_id, start_ms, end_ms, segments, bytes, frames) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&node_id)
        .bind(&camera_id)
        .bind(g.0)
        .bind(g.1)
        .bind(g.2)
        .bind(g.3)
        .bind(g.4)
        .execute(&mut **tx)
        .await
        .map_err(db("insert split run"))?;
        sqlx::query(
            "UPDATE recording_segments SET run_id = $1 WHERE run_id = $2 AND start_ms >= $3",
        )
        .bind(&id)
        .bind(&run_id)
        .bind(g.0)
        .execute(&mut **tx)
        .await
        .map_err(db("move segments to split run"))?;
    }
    Ok(())
}

/// Why `u` did not apply, read inside its transaction (so that an incident created earlier in
/// the same transaction counts as existing) before that transaction is rolled back.
async fn version_conflict(tx: &mut sqlx::Transaction<'_, Db>, u: &IncidentUpdate) -> Error {
    let row = sqlx::query("SELECT version FROM incidents WHERE id = $1")
        .bind(u.id.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db("read incident version"));
    match row.and_then(|r| r.as_ref().map(|r| col::<i64>(r, "version")).transpose()) {
        Err(e) => e,
        Ok(None) => Error::new(ErrorKind::NotFound, format!("no incident {}", u.id)),
        Ok(Some(version)) => Error::new(
            ErrorKind::FailedPrecondition,
            format!(
                "incident {} changed meanwhile (version {}, expected {}); reload and retry",
                u.id, version, u.expected_version
            ),
        ),
    }
}

#[async_trait]
impl crate::Store for StoreImpl {
    fn backend(&self) -> Backend {
        BACKEND
    }

    fn node_id(&self) -> &NodeId {
        &self.node
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    async fn migrate(&self) -> Result<Vec<i64>> {
        self.migrate_impl().await
    }

    async fn schema_version(&self) -> Result<i64> {
        use sqlx::Executor;
        self.pool
            .execute(crate::migrate::CREATE_MIGRATIONS_TABLE)
            .await
            .map_err(db("create schema_migrations"))?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
            .fetch_one(&self.pool)
            .await
            .map_err(db("read schema version"))?;
        col::<i64>(&row, "v")
    }

    async fn sync_cameras(&self, cameras: &[CameraUpsert], at: Timestamp) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        for c in cameras {
            sqlx::query(
                "INSERT INTO cameras (id, node_id, name, state, last_error, state_since_ms, updated_ms) \
                 VALUES ($1, $2, $3, 'connecting', NULL, $4, $4) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, node_id = excluded.node_id, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(&c.id)
            .bind(self.node.as_str())
            .bind(&c.name)
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(db("upsert camera"))?;
        }
        tx.commit().await.map_err(db("commit cameras"))?;
        Ok(())
    }

    async fn set_camera_state(&self, c: &CameraStateChange) -> Result<()> {
        // state_since moves only when the state does, so "offline since 03:12" survives retries.
        let r = sqlx::query(
            "UPDATE cameras SET \
             state_since_ms = CASE WHEN state = $2 THEN state_since_ms ELSE $4 END, \
             state = $2, last_error = $3, updated_ms = $4 WHERE id = $1",
        )
        .bind(&c.camera_id)
        .bind(c.state.as_str())
        .bind(&c.last_error)
        .bind(c.at.as_millis())
        .execute(&self.pool)
        .await
        .map_err(db("update camera state"))?;
        if r.rows_affected() == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no camera {:?}", c.camera_id),
            ));
        }
        Ok(())
    }

    async fn list_cameras(&self) -> Result<Vec<CameraRecord>> {
        let sql = format!("SELECT {CAMERA_COLS} FROM cameras ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list cameras"))?;
        rows.iter().map(camera).collect()
    }

    async fn get_camera(&self, camera_id: &str) -> Result<Option<CameraRecord>> {
        let sql = format!("SELECT {CAMERA_COLS} FROM cameras WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(camera_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get camera"))?;
        row.as_ref().map(camera).transpose()
    }

    async fn insert_segment(&self, s: &Segment) -> Result<()> {
        self.insert_segments(std::slice::from_ref(s)).await
    }

    async fn insert_segments(&self, segments: &[Segment]) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        for s in segments {
            insert_segment_tx(&mut tx, s).await?;
        }
        tx.commit().await.map_err(db("commit segments"))?;
        Ok(())
    }

    async fn recording_runs(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<RecordingRun>> {
        let rows = sqlx::query(
            "SELECT start_ms, end_ms, segments, bytes, frames FROM recording_runs \
             WHERE camera_id = $1 AND start_ms < $3 AND end_ms > $2 ORDER BY start_ms",
        )
        .bind(camera_id)
        .bind(from.as_millis())
        .bind(to.as_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list recording runs"))?;
        rows.iter()
            .map(|r| {
                Ok(RecordingRun {
                    start: ts(r, "start_ms")?,
                    end: ts(r, "end_ms")?,
                    segments: col(r, "segments")?,
                    bytes: col(r, "bytes")?,
                    frames: col(r, "frames")?,
                })
            })
            .collect()
    }

    async fn list_segments(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT id, node_id, camera_id, stream, start_ms, end_ms, bytes, frames, path, sha256, \
             pinned_until_ms, created_ms FROM recording_segments \
             WHERE camera_id = $1 AND start_ms < $3 AND end_ms > $2 ORDER BY start_ms, id",
        )
        .bind(camera_id)
        .bind(from.as_millis())
        .bind(to.as_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list segments"))?;
        rows.iter().map(segment).collect()
    }

    async fn insert_gap(&self, g: &Gap) -> Result<()> {
        sqlx::query(
            "INSERT INTO recording_gaps (id, node_id, camera_id, start_ms, end_ms, reason, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(g.id.to_string())
        .bind(&g.node_id)
        .bind(&g.camera_id)
        .bind(g.start.as_millis())
        .bind(g.end.map(Timestamp::as_millis))
        .bind(&g.reason)
        .bind(g.created_at.as_millis())
        .execute(&self.pool)
        .await
        .map_err(db("insert gap"))?;
        Ok(())
    }

    async fn list_gaps(&self, camera_id: &str, from: Timestamp, to: Timestamp) -> Result<Vec<Gap>> {
        let rows = sqlx::query(
            "SELECT id, node_id, camera_id, start_ms, end_ms, reason, created_ms FROM recording_gaps \
             WHERE camera_id = $1 AND start_ms < $3 AND (end_ms IS NULL OR end_ms > $2) ORDER BY start_ms, id",
        )
        .bind(camera_id)
        .bind(from.as_millis())
        .bind(to.as_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list gaps"))?;
        rows.iter().map(gap).collect()
    }

    async fn close_gap(&self, gap_id: EntityId, end: Timestamp) -> Result<()> {
        let r =
            sqlx::query("UPDATE recording_gaps SET end_ms = $2 WHERE id = $1 AND end_ms IS NULL")
                .bind(gap_id.to_string())
                .bind(end.as_millis())
                .execute(&self.pool)
                .await
                .map_err(db("close gap"))?;
        if r.rows_affected() == 0 {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("gap {gap_id} is unknown or already closed"),
            ));
        }
        Ok(())
    }

    async fn delete_segment(&self, segment_id: EntityId) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        delete_segment_tx(&mut tx, segment_id).await?;
        tx.commit().await.map_err(db("commit segment deletion"))?;
        Ok(())
    }

    async fn oldest_unpinned_segments(
        &self,
        camera_id: Option<&str>,
        before: Option<Timestamp>,
        now: Timestamp,
        clip_hold_ms: i64,
        limit: u32,
    ) -> Result<Vec<Segment>> {
        let rows = sqlx::query(
            "SELECT s.id, s.node_id, s.camera_id, s.stream, s.start_ms, s.end_ms, s.bytes, s.frames, \
             s.path, s.sha256, s.pinned_until_ms, s.created_ms FROM recording_segments s \
             WHERE (CAST($1 AS TEXT) IS NULL OR s.camera_id = $1) \
             AND (CAST($2 AS BIGINT) IS NULL OR s.start_ms < $2) \
             AND (s.pinned_until_ms IS NULL OR s.pinned_until_ms <= $3) \
             AND NOT EXISTS (SELECT 1 FROM incident_clips c JOIN incidents i ON i.id = c.incident_id \
                 WHERE c.camera_id = s.camera_id AND c.from_ms < s.end_ms AND c.to_ms > s.start_ms \
                 AND (i.resolved_ms IS NULL OR i.resolved_ms > $3 - $5)) \
             ORDER BY s.start_ms, s.id LIMIT $4",
        )
        .bind(camera_id)
        .bind(before.map(Timestamp::as_millis))
        .bind(now.as_millis())
        .bind(i64::from(limit.max(1)))
        .bind(clip_hold_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list oldest segments"))?;
        rows.iter().map(segment).collect()
    }

    async fn pin_segments(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
        until: Timestamp,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE recording_segments SET pinned_until_ms = $4 \
             WHERE camera_id = $1 AND start_ms < $3 AND end_ms > $2 \
             AND (pinned_until_ms IS NULL OR pinned_until_ms < $4)",
        )
        .bind(camera_id)
        .bind(from.as_millis())
        .bind(to.as_millis())
        .bind(until.as_millis())
        .execute(&self.pool)
        .await
        .map_err(db("pin segments"))?;
        Ok(r.rows_affected())
    }

    async fn storage_usage(&self) -> Result<Vec<StorageUsage>> {
        let rows = sqlx::query(
            "SELECT camera_id, CAST(SUM(bytes) AS BIGINT) AS bytes, COUNT(*) AS n, MIN(start_ms) AS oldest \
             FROM recording_segments GROUP BY camera_id ORDER BY camera_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("storage usage"))?;
        rows.iter()
            .map(|r| {
                Ok(StorageUsage {
                    camera_id: col(r, "camera_id")?,
                    bytes: col::<Option<i64>>(r, "bytes")?.unwrap_or(0),
                    segments: col(r, "n")?,
                    oldest: opt_ts(r, "oldest")?,
                })
            })
            .collect()
    }

    async fn sync_devices(&self, devices: &[DeviceUpsert], at: Timestamp) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        for d in devices {
            sqlx::query(
                "INSERT INTO devices (id, node_id, name, lat, lon, updated_ms) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (id) DO UPDATE SET node_id = excluded.node_id, name = excluded.name, \
                 lat = excluded.lat, lon = excluded.lon, updated_ms = excluded.updated_ms",
            )
            .bind(&d.id)
            .bind(self.node.as_str())
            .bind(&d.name)
            .bind(d.lat)
            .bind(d.lon)
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(db("upsert device"))?;
            sqlx::query("DELETE FROM device_cameras WHERE device_id = $1")
                .bind(&d.id)
                .execute(&mut *tx)
                .await
                .map_err(db("clear device cameras"))?;
            for cam in &d.cameras {
                sqlx::query("INSERT INTO device_cameras (device_id, camera_id) VALUES ($1, $2)")
                    .bind(&d.id)
                    .bind(cam)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("link device camera"))?;
            }
        }
        tx.commit().await.map_err(db("commit devices"))?;
        Ok(())
    }

    async fn record_device_status(&self, s: &DeviceStatus) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        if !device_status_tx(&mut tx, s).await? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no device {:?}", s.device_id),
            ));
        }
        tx.commit().await.map_err(db("commit device status"))?;
        Ok(())
    }

    async fn list_devices(&self) -> Result<Vec<DeviceRecord>> {
        let rows = sqlx::query(
            "SELECT id, node_id, name, lat, lon, online, battery, rssi, last_seen_ms FROM devices ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list devices"))?;
        let links = sqlx::query(
            "SELECT device_id, camera_id FROM device_cameras ORDER BY device_id, camera_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list device cameras"))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let device_id: String = col(r, "id")?;
            let mut cameras = Vec::new();
            for l in &links {
                if col::<String>(l, "device_id")? == device_id {
                    cameras.push(col(l, "camera_id")?);
                }
            }
            out.push(DeviceRecord {
                id: device_id,
                node_id: col(r, "node_id")?,
                name: col(r, "name")?,
                lat: col(r, "lat")?,
                lon: col(r, "lon")?,
                cameras,
                online: col(r, "online")?,
                battery: col(r, "battery")?,
                rssi: col(r, "rssi")?,
                last_seen: opt_ts(r, "last_seen_ms")?,
            });
        }
        Ok(out)
    }

    async fn insert_signal(&self, s: &Signal) -> Result<SignalInsert> {
        let mut tx = begin_write(&self.pool).await?;
        let r = insert_signals_tx(&mut tx, std::slice::from_ref(s)).await?;
        tx.commit().await.map_err(db("commit signal"))?;
        r.into_iter()
            .next()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "no result for the signal"))
    }

    async fn get_signal(&self, signal_id: EntityId) -> Result<Option<Signal>> {
        let sql = format!("SELECT {SIGNAL_COLS} FROM alarm_signals WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(signal_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get signal"))?;
        row.as_ref().map(signal).transpose()
    }

    async fn incident_of_signal(&self, signal_id: EntityId) -> Result<Option<EntityId>> {
        let row = sqlx::query("SELECT incident_id FROM incident_signals WHERE signal_id = $1")
            .bind(signal_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("find incident of signal"))?;
        row.as_ref().map(|r| id(r, "incident_id")).transpose()
    }

    async fn create_incident(&self, new: &NewIncident) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        create_incident_tx(&mut tx, new).await?;
        tx.commit().await.map_err(db("commit incident"))?;
        Ok(())
    }

    async fn update_incident(&self, u: &IncidentUpdate) -> Result<Incident> {
        let mut tx = begin_write(&self.pool).await?;
        if !update_incident_tx(&mut tx, u).await? {
            return Err(version_conflict(&mut tx, u).await);
        }
        tx.commit().await.map_err(db("commit incident update"))?;
        self.get_incident(u.id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Internal, format!("incident {} vanished", u.id)))
    }

    async fn get_incident(&self, incident_id: EntityId) -> Result<Option<Incident>> {
        let sql = format!("SELECT {INCIDENT_COLS} FROM incidents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(incident_id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("get incident"))?;
        row.as_ref().map(incident).transpose()
    }

    async fn list_incidents(&self, f: &IncidentFilter) -> Result<Vec<Incident>> {
        // Alarm-wall order: most urgent first, then oldest first.
        let sql = format!(
            "SELECT {INCIDENT_COLS} FROM incidents \
             WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) \
             AND ($2 = 0 OR state <> 'resolved') \
             AND (CAST($3 AS BIGINT) IS NULL OR opened_ms >= $3) \
             AND (CAST($5 AS BIGINT) IS NULL OR priority = $5) \
             AND (CAST($6 AS TEXT) IS NULL OR source_id = $6) \
             AND (CAST($7 AS TEXT) IS NULL OR source_id = $7 OR EXISTS (SELECT 1 FROM incident_clips c \
                  WHERE c.incident_id = incidents.id AND c.camera_id = $7)) \
             ORDER BY priority, opened_ms, id LIMIT $4"
        );
        let limit = if f.limit == 0 {
            500
        } else {
            f.limit.min(10_000)
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(f.state.map(|s| s.as_str()))
            .bind(i64::from(f.open_only))
            .bind(f.since.map(Timestamp::as_millis))
            .bind(i64::from(limit))
            .bind(f.priority)
            .bind(f.device.as_deref())
            .bind(f.camera.as_deref())
            .fetch_all(&self.pool)
            .await
            .map_err(db("list incidents"))?;
        rows.iter().map(incident).collect()
    }

    async fn incident_changes(&self, incident_id: EntityId) -> Result<Vec<IncidentChange>> {
        let rows = sqlx::query(
            "SELECT id, node_id, incident_id, at_ms, actor, from_state, to_state, outcome, note \
             FROM incident_changes WHERE incident_id = $1 ORDER BY at_ms, id",
        )
        .bind(incident_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list incident changes"))?;
        rows.iter().map(change).collect()
    }

    async fn incident_signals(&self, incident_id: EntityId) -> Result<Vec<Signal>> {
        let sql = format!(
            "SELECT {cols} FROM alarm_signals s JOIN incident_signals l ON l.signal_id = s.id \
             WHERE l.incident_id = $1 ORDER BY s.received_ms, s.id",
            cols = SIGNAL_COLS
                .split(", ")
                .map(|c| format!("s.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(incident_id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db("list incident signals"))?;
        rows.iter().map(signal).collect()
    }

    async fn ingest_device_batch(
        &self,
        statuses: &[DeviceStatus],
        signals: &[Signal],
    ) -> Result<Vec<SignalInsert>> {
        let mut tx = begin_write(&self.pool).await?;
        for st in merge_statuses(statuses) {
            device_status_tx(&mut tx, &st).await?;
        }
        let out = insert_signals_tx(&mut tx, signals).await?;
        tx.commit().await.map_err(db("commit device batch"))?;
        Ok(out)
    }

    async fn commit_alarms(&self, c: &AlarmCommit) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        for n in &c.creates {
            create_incident_tx(&mut tx, n).await?;
        }
        for u in &c.updates {
            if !update_incident_tx(&mut tx, u).await? {
                return Err(version_conflict(&mut tx, u).await);
            }
        }
        for clip in &c.clips {
            upsert_clip(&mut tx, clip).await?;
        }
        for m in &c.motion {
            upsert_motion(&mut tx, m).await?;
        }
        insert_events(&mut tx, &c.events).await?;
        tx.commit().await.map_err(db("commit alarms"))?;
        Ok(())
    }

    async fn incident_clips(&self, incident_id: EntityId) -> Result<Vec<IncidentClip>> {
        let rows = sqlx::query(
            "SELECT incident_id, camera_id, from_ms, to_ms FROM incident_clips \
             WHERE incident_id = $1 ORDER BY camera_id",
        )
        .bind(incident_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db("list incident clips"))?;
        rows.iter()
            .map(|r| {
                Ok(IncidentClip {
                    incident_id: id(r, "incident_id")?,
                    camera_id: col(r, "camera_id")?,
                    from: ts(r, "from_ms")?,
                    to: ts(r, "to_ms")?,
                })
            })
            .collect()
    }

    async fn list_motion(
        &self,
        camera_id: &str,
        from: Timestamp,
        to: Timestamp,
        limit: u32,
    ) -> Result<Vec<MotionRecord>> {
        let rows = sqlx::query(
            "SELECT id, node_id, camera_id, zone, start_ms, end_ms, score, boxes FROM motion_events \
             WHERE camera_id = $1 AND start_ms < $3 AND (end_ms IS NULL OR end_ms > $2) \
             ORDER BY start_ms, id LIMIT $4",
        )
        .bind(camera_id)
        .bind(from.as_millis())
        .bind(to.as_millis())
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list motion events"))?;
        rows.iter().map(motion).collect()
    }

    async fn append_events(&self, events: &[EventRecord]) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await.map_err(db("commit events"))?;
        Ok(())
    }

    async fn events_after(&self, after: EntityId, limit: u32) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT id, node_id, at_ms, topic, subject, payload FROM events WHERE id > $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(after.to_string())
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list events"))?;
        rows.iter().map(event).collect()
    }

    async fn latest_event_id(&self) -> Result<Option<EntityId>> {
        let row = sqlx::query("SELECT id FROM events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(db("find latest event"))?;
        row.as_ref().map(|r| id(r, "id")).transpose()
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64> {
        let r = sqlx::query("DELETE FROM events WHERE at_ms < $1")
            .bind(before.as_millis())
            .execute(&self.pool)
            .await
            .map_err(db("prune events"))?;
        Ok(r.rows_affected())
    }

    async fn enqueue_outbox(&self, entries: &[OutboxEntry]) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        insert_outbox(&mut tx, entries).await?;
        tx.commit().await.map_err(db("commit outbox"))?;
        Ok(())
    }

    async fn pending_outbox(
        &self,
        sink: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let sql = format!(
            "SELECT {OUTBOX_COLS} FROM outbox WHERE sink = $1 AND node_id = $4 \
             AND delivered_ms IS NULL AND expired_ms IS NULL AND next_attempt_ms <= $2 \
             ORDER BY priority, id LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sink)
            .bind(now.as_millis())
            .bind(i64::from(limit.max(1)))
            .bind(self.node.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("list pending outbox"))?;
        rows.iter().map(outbox).collect()
    }

    async fn mark_outbox_delivered(&self, entry: EntityId, at: Timestamp) -> Result<()> {
        let r = sqlx::query(
            "UPDATE outbox SET delivered_ms = $2, attempts = attempts + 1, last_error = NULL \
             WHERE id = $1 AND delivered_ms IS NULL",
        )
        .bind(entry.to_string())
        .bind(at.as_millis())
        .execute(&self.pool)
        .await
        .map_err(db("mark outbox delivered"))?;
        if r.rows_affected() == 0 {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                format!("outbox entry {entry} is unknown or already delivered"),
            ));
        }
        Ok(())
    }

    async fn mark_outbox_failed(
        &self,
        entry: EntityId,
        next_attempt: Timestamp,
        error: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $2, last_error = $3 \
             WHERE id = $1 AND delivered_ms IS NULL",
        )
        .bind(entry.to_string())
        .bind(next_attempt.as_millis())
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(db("mark outbox failed"))?;
        Ok(())
    }

    async fn due_outbox(
        &self,
        sink: &str,
        now: Timestamp,
        per_channel: u32,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        // One window over the live entries numbers each channel's in id order and carries its
        // head's priority, id and retry time to every row, so no join of the window with itself
        // is needed: PostgreSQL planned that join as a nested loop whenever its statistics
        // lagged behind a fresh backlog (10 s per round at 10 000 rows). Only ids and order
        // keys go through the window; payloads are joined in at the end by primary key.
        let sql = format!(
            "WITH live AS ( \
                 SELECT id, \
                        ROW_NUMBER() OVER w AS rn, \
                        FIRST_VALUE(priority) OVER w AS head_priority, \
                        FIRST_VALUE(id) OVER w AS head_id, \
                        FIRST_VALUE(next_attempt_ms) OVER w AS head_next \
                 FROM outbox \
                 WHERE sink = $1 AND node_id = $5 AND delivered_ms IS NULL AND expired_ms IS NULL \
                 WINDOW w AS (PARTITION BY channel ORDER BY id) \
             ), picked AS ( \
                 SELECT id AS pick_id, head_priority, head_id, rn \
                 FROM live \
                 WHERE head_next <= $2 AND rn <= $3 \
                 ORDER BY head_priority, head_id, rn \
                 LIMIT $4 \
             ) \
             SELECT {OUTBOX_COLS_O} FROM picked JOIN outbox o ON o.id = picked.pick_id \
             ORDER BY picked.head_priority, picked.head_id, picked.rn"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sink)
            .bind(now.as_millis())
            .bind(i64::from(per_channel.max(1)))
            .bind(i64::from(limit.max(1)))
            .bind(self.node.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("list due outbox entries"))?;
        rows.iter().map(outbox).collect()
    }

    async fn retry_outbox_now(&self, sink: &str, now: Timestamp) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET next_attempt_ms = $2 \
             WHERE sink = $1 AND node_id = $3 AND delivered_ms IS NULL AND expired_ms IS NULL \
             AND next_attempt_ms > $2",
        )
        .bind(sink)
        .bind(now.as_millis())
        .bind(self.node.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("reschedule outbox entries"))?;
        Ok(done.rows_affected())
    }

    async fn record_outbox_results(&self, results: &[OutboxResult]) -> Result<u64> {
        let mut tx = begin_write(&self.pool).await?;
        let mut changed = 0;
        for r in results {
            let q = match r {
                OutboxResult::Delivered { id, at } => sqlx::query(
                    "UPDATE outbox SET delivered_ms = $2, attempts = attempts + 1, \
                     last_error = NULL WHERE id = $1 AND delivered_ms IS NULL",
                )
                .bind(id.to_string())
                .bind(at.as_millis()),
                OutboxResult::Failed {
                    id,
                    next_attempt,
                    error,
                } => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = $2, \
                     last_error = $3 \
                     WHERE id = $1 AND delivered_ms IS NULL AND expired_ms IS NULL",
                )
                .bind(id.to_string())
                .bind(next_attempt.as_millis())
                .bind(error.as_str()),
                OutboxResult::Rejected { id, at, error } => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, expired_ms = $2, last_error = $3 \
                     WHERE id = $1 AND delivered_ms IS NULL AND expired_ms IS NULL",
                )
                .bind(id.to_string())
                .bind(at.as_millis())
                .bind(error.as_str()),
            };
            changed += q
                .execute(&mut *tx)
                .await
                .map_err(db("record outbox result"))?
                .rows_affected();
        }
        tx.commit().await.map_err(db("commit outbox results"))?;
        Ok(changed)
    }

    async fn expire_outbox(
        &self,
        sink: &str,
        before: Timestamp,
        at: Timestamp,
        reason: &str,
    ) -> Result<Vec<ExpiredOutbox>> {
        let rows = sqlx::query(
            "UPDATE outbox SET expired_ms = $3, last_error = $4 \
             WHERE sink = $1 AND node_id = $5 AND created_ms < $2 AND delivered_ms IS NULL \
             AND expired_ms IS NULL \
             RETURNING id, channel, priority, created_ms, attempts, \
             CAST(LENGTH(payload) AS BIGINT) AS bytes",
        )
        .bind(sink)
        .bind(before.as_millis())
        .bind(at.as_millis())
        .bind(reason)
        .bind(self.node.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(db("expire old outbox entries"))?;
        let mut out = rows
            .iter()
            .map(expired_outbox)
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    async fn expire_outbox_over_budget(
        &self,
        sink: &str,
        max_bytes: i64,
        keep_priority: i64,
        at: Timestamp,
        reason: &str,
    ) -> Result<Vec<ExpiredOutbox>> {
        const PAGE: i64 = 1_000;
        let total: i64 = sqlx::query(
            "SELECT COALESCE(CAST(SUM(LENGTH(payload)) AS BIGINT), 0) AS bytes FROM outbox \
             WHERE sink = $1 AND node_id = $2 AND delivered_ms IS NULL AND expired_ms IS NULL",
        )
        .bind(sink)
        .bind(self.node.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("sum outbox bytes"))
        .and_then(|r| col(&r, "bytes"))?;
        let mut excess = total - max_bytes;
        if excess <= 0 {
            return Ok(Vec::new());
        }
        // Choose the victims first (reads only), then expire them in one write transaction, so
        // a SQLite reader never has to upgrade to a writer mid-transaction.
        let mut victims = Vec::new();
        let mut offset = 0;
        while excess > 0 {
            let rows = sqlx::query(
                "SELECT id, channel, priority, created_ms, attempts, \
                 CAST(LENGTH(payload) AS BIGINT) AS bytes FROM outbox \
                 WHERE sink = $1 AND node_id = $5 AND delivered_ms IS NULL AND expired_ms IS NULL \
                 AND priority > $2 ORDER BY priority DESC, id LIMIT $3 OFFSET $4",
            )
            .bind(sink)
            .bind(keep_priority)
            .bind(PAGE)
            .bind(offset)
            .bind(self.node.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(db("list outbox entries to expire"))?;
            if rows.is_empty() {
                break;
            }
            offset += PAGE;
            for r in &rows {
                let v = expired_outbox(r)?;
                excess -= v.bytes;
                victims.push(v);
                if excess <= 0 {
                    break;
                }
            }
        }
        let mut tx = begin_write(&self.pool).await?;
        let mut expired = Vec::with_capacity(victims.len());
        for v in victims {
            let n = sqlx::query(
                "UPDATE outbox SET expired_ms = $2, last_error = $3 \
                 WHERE id = $1 AND delivered_ms IS NULL AND expired_ms IS NULL",
            )
            .bind(v.id.to_string())
            .bind(at.as_millis())
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(db("expire outbox entry"))?
            .rows_affected();
            // Delivered (or expired) since it was chosen: it no longer counts.
            if n == 1 {
                expired.push(v);
            }
        }
        tx.commit().await.map_err(db("commit outbox expiry"))?;
        Ok(expired)
    }

    async fn outbox_stats(&self, sink: &str) -> Result<OutboxStats> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(CAST(SUM(LENGTH(payload)) AS BIGINT), 0) AS bytes, \
             MIN(created_ms) AS oldest_ms FROM outbox \
             WHERE sink = $1 AND node_id = $2 AND delivered_ms IS NULL AND expired_ms IS NULL",
        )
        .bind(sink)
        .bind(self.node.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("outbox stats"))?;
        let due = sqlx::query(
            "SELECT MIN(o.next_attempt_ms) AS due_ms FROM outbox o JOIN ( \
                 SELECT MIN(id) AS head FROM outbox \
                 WHERE sink = $1 AND node_id = $2 AND delivered_ms IS NULL AND expired_ms IS NULL \
                 GROUP BY channel \
             ) h ON o.id = h.head",
        )
        .bind(sink)
        .bind(self.node.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db("outbox next due"))?;
        Ok(OutboxStats {
            pending: col(&r, "n")?,
            bytes: col(&r, "bytes")?,
            oldest: opt_ts(&r, "oldest_ms")?,
            next_due: opt_ts(&due, "due_ms")?,
        })
    }

    async fn prune_outbox(&self, before: Timestamp) -> Result<u64> {
        let r = sqlx::query(
            "DELETE FROM outbox WHERE (delivered_ms IS NOT NULL AND delivered_ms < $1) \
             OR (expired_ms IS NOT NULL AND expired_ms < $1)",
        )
        .bind(before.as_millis())
        .execute(&self.pool)
        .await
        .map_err(db("prune outbox"))?;
        Ok(r.rows_affected())
    }

    async fn append_audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, node_id, at_ms, actor, actor_kind, action, target, detail, remote_addr) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(e.id.to_string())
        .bind(&e.node_id)
        .bind(e.at.as_millis())
        .bind(&e.actor)
        .bind(e.actor_kind.as_str())
        .bind(&e.action)
        .bind(&e.target)
        .bind(&e.detail)
        .bind(&e.remote_addr)
        .execute(&self.pool)
        .await
        .map_err(db("append audit entry"))?;
        Ok(())
    }

    async fn list_audit(&self, since: Timestamp, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, node_id, at_ms, actor, actor_kind, action, target, detail, remote_addr \
             FROM audit_log WHERE at_ms >= $1 ORDER BY at_ms, id LIMIT $2",
        )
        .bind(since.as_millis())
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list audit entries"))?;
        rows.iter().map(audit).collect()
    }

    async fn sync_api_tokens(&self, tokens: &[ApiToken], at: Timestamp) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        let existing = sqlx::query("SELECT name FROM api_tokens WHERE source = 'config'")
            .fetch_all(&mut *tx)
            .await
            .map_err(db("list tokens"))?;
        for r in &existing {
            let name: String = col(r, "name")?;
            if !tokens.iter().any(|t| t.name == name) {
                sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                    .bind(&name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("delete token"))?;
            }
        }
        for t in tokens {
            sqlx::query(
                "INSERT INTO api_tokens (name, token_sha256, role, cameras, devices, source, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'config', $6) \
                 ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256, role = excluded.role, \
                 cameras = excluded.cameras, devices = excluded.devices, updated_ms = excluded.updated_ms",
            )
            .bind(&t.name)
            .bind(&t.token_sha256)
            .bind(t.role.as_str())
            .bind(json_text(&t.cameras))
            .bind(json_text(&t.devices))
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(db("upsert token"))?;
        }
        tx.commit().await.map_err(db("commit tokens"))?;
        Ok(())
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(
            "SELECT name, token_sha256, role, cameras, devices, last_used_ms FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("list tokens"))?;
        rows.iter().map(api_token).collect()
    }

    async fn touch_api_token(&self, name: &str, at: Timestamp) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_ms = $2 WHERE name = $1")
            .bind(name)
            .bind(at.as_millis())
            .execute(&self.pool)
            .await
            .map_err(db("touch token"))?;
        Ok(())
    }

    async fn create_user(&self, u: &UserRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, role, cameras, devices, disabled, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(u.id.to_string())
        .bind(&u.username)
        .bind(&u.password_hash)
        .bind(u.role.as_str())
        .bind(json_text(&u.cameras))
        .bind(json_text(&u.devices))
        .bind(u.disabled)
        .bind(u.created_at.as_millis())
        .bind(u.updated_at.as_millis())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            let e = db("create user")(e);
            if e.kind() == ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::AlreadyExists,
                    format!("user {:?} already exists", u.username),
                )
            } else {
                e
            }
        })?;
        Ok(())
    }

    async fn update_user(
        &self,
        username: &str,
        update: &UserUpdate,
        at: Timestamp,
    ) -> Result<UserRecord> {
        let mut tx = begin_write(&self.pool).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("load user"))?
        .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no user {username:?}")))?;
        let mut u = user(&row)?;
        if let Some(r) = update.role {
            u.role = r;
        }
        if let Some(c) = &update.cameras {
            u.cameras = c.clone();
        }
        if let Some(d) = &update.devices {
            u.devices = d.clone();
        }
        u.updated_at = at;
        sqlx::query(
            "UPDATE users SET role = $2, cameras = $3, devices = $4, updated_ms = $5 WHERE id = $1",
        )
        .bind(u.id.to_string())
        .bind(u.role.as_str())
        .bind(json_text(&u.cameras))
        .bind(json_text(&u.devices))
        .bind(at.as_millis())
        .execute(&mut *tx)
        .await
        .map_err(db("update user"))?;
        tx.commit().await.map_err(db("commit user update"))?;
        Ok(u)
    }

    async fn update_user_password(
        &self,
        username: &str,
        password_hash: &str,
        at: Timestamp,
    ) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        let n =
            sqlx::query("UPDATE users SET password_hash = $2, updated_ms = $3 WHERE username = $1")
                .bind(username)
                .bind(password_hash)
                .bind(at.as_millis())
                .execute(&mut *tx)
                .await
                .map_err(db("update password"))?
                .rows_affected();
        user_changed(n, username)?;
        sqlx::query(
            "DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE username = $1)",
        )
        .bind(username)
        .execute(&mut *tx)
        .await
        .map_err(db("end sessions"))?;
        tx.commit().await.map_err(db("commit password"))?;
        Ok(())
    }

    async fn set_user_disabled(&self, username: &str, disabled: bool, at: Timestamp) -> Result<()> {
        let mut tx = begin_write(&self.pool).await?;
        let n = sqlx::query("UPDATE users SET disabled = $2, updated_ms = $3 WHERE username = $1")
            .bind(username)
            .bind(disabled)
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(db("disable user"))?
            .rows_affected();
        user_changed(n, username)?;
        if disabled {
            sqlx::query(
                "DELETE FROM sessions WHERE user_id IN (SELECT id FROM users WHERE username = $1)",
            )
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(db("end sessions"))?;
        }
        tx.commit().await.map_err(db("commit user state"))?;
        Ok(())
    }

    async fn get_user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("get user"))?
        .as_ref()
        .map(user)
        .transpose()
    }

    async fn get_user(&self, user_id: EntityId) -> Result<Option<UserRecord>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE id = $1"
        )))
        .bind(user_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db("get user"))?
        .as_ref()
        .map(user)
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users ORDER BY username"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("list users"))?;
        rows.iter().map(user).collect()
    }

    async fn create_session(&self, s: &SessionRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (id, user_id, csrf, created_ms, expires_ms, last_seen_ms, remote_addr) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&s.id)
        .bind(s.user_id.to_string())
        .bind(&s.csrf)
        .bind(s.created_at.as_millis())
        .bind(s.expires_at.as_millis())
        .bind(s.last_seen.as_millis())
        .bind(&s.remote_addr)
        .execute(&self.pool)
        .await
        .map_err(db("create session"))?;
        Ok(())
    }

    async fn get_session(&self, session_id: &str) -> Result<Option<SessionRecord>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SESSION_COLS} FROM sessions WHERE id = $1"
        )))
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("get session"))?
        .as_ref()
        .map(session)
        .transpose()
    }

    async fn touch_session(
        &self,
        session_id: &str,
        at: Timestamp,
        expires: Timestamp,
    ) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_ms = $2, expires_ms = $3 WHERE id = $1")
            .bind(session_id)
            .bind(at.as_millis())
            .bind(expires.as_millis())
            .execute(&self.pool)
            .await
            .map_err(db("touch session"))?;
        Ok(())
    }

    async fn delete_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session_id)
            .execute(&self.pool)
            .await
            .map_err(db("delete session"))?;
        Ok(())
    }

    async fn prune_sessions(&self, before: Timestamp) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE expires_ms < $1")
            .bind(before.as_millis())
            .execute(&self.pool)
            .await
            .map_err(db("prune sessions"))?;
        Ok(r.rows_affected())
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
