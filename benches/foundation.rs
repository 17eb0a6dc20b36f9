//! Foundation costs: loading a configuration, checking a bearer token, and storing an alarm
//! signal durably on SQLite (WAL, synchronous=FULL) and on PostgreSQL, measured in one run.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use xueliang_core::config::{NoEnv, load_str};
use xueliang_core::model::SignalSource;
use xueliang_core::{EntityId, Timestamp};
use xueliang_store::Signal;
use xueliang_store::testing::TestDb;

fn config_and_auth(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("config");
    let text = std::fs::read_to_string(root.join("edge.toml")).unwrap();
    c.bench_function("config/load_edge_toml", |b| {
        b.iter(|| load_str(&text, "edge.toml", &root, &NoEnv).unwrap())
    });
    let cfg = load_str(&text, "edge.toml", &root, &NoEnv).unwrap();
    let mut tokens = cfg.api.tokens.clone();
    for i in 0..31 {
        let mut t = tokens[0].clone();
        t.name = format!("t{i}");
        t.token = Some(xueliang_core::config::Secret::new(format!(
            "token-number-{i:04}-0123456789"
        )));
        tokens.push(t);
    }
    let set = xueliang_api::TokenSet::from_config(&tokens);
    c.bench_function("auth/verify_among_32_tokens", |b| {
        b.iter(|| set.verify("token-number-0017-0123456789").unwrap())
    });
}

fn signal_insert(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("store/insert_signal");
    group.sample_size(30);
    let sqlite = TestDb::sqlite();
    let pg = rt.block_on(TestDb::postgres());
    let mut dbs = vec![("sqlite", &sqlite)];
    match &pg {
        Ok(db) => dbs.push(("postgres", db)),
        Err(e) => eprintln!("skipping PostgreSQL: {}", e.chain()),
    }
    for (name, db) in dbs {
        let store = rt.block_on(db.open("bench")).unwrap();
        let mut seq = 0i64;
        group.bench_function(name, |b| {
            b.iter(|| {
                seq += 1;
                let now = Timestamp::from_millis(1_795_000_000_000 + seq);
                let s = Signal {
                    id: EntityId::new_at(now),
                    node_id: "bench".into(),
                    source: SignalSource::Device,
                    source_id: "btn-1".into(),
                    seq: Some(seq),
                    kind: "panic".into(),
                    device_ts: Some(now),
                    received_at: now,
                    payload: format!(r#"{{"seq":{seq},"type":"panic","battery":87}}"#),
                };
                rt.block_on(store.insert_signal(&s)).unwrap()
            })
        });
        rt.block_on(store.close());
    }
    group.finish();
}

criterion_group!(benches, config_and_auth, signal_insert);
criterion_main!(benches);
