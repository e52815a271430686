//! The PostgreSQL store (`[store] postgres_url`): the same records as the embedded one, so that
//! several distributor replicas serve one fleet. Versions are assigned by an `UPDATE … RETURNING`
//! on one row, which serialises appends across replicas; each append sends
//! `NOTIFY berth_events, '<version>'` in its transaction, so every replica hears of it when it
//! commits ([`listen`]).
//!
//! The `postgres` client blocks: each store owns one connection on a thread of its own, and
//! callers (async handlers included) hand it their work and wait for the answer.

use std::sync::mpsc;
use std::time::Duration;

use berth_shared::protocol::{Action, Invalidation, PolicyEvent, QuarantineOrder};
use parking_lot::Mutex;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use serde::de::DeserializeOwned;

use super::{json, parse, Bucket, EdgeRecord, Job, Store, StoreError};

/// How long the listener waits before connecting again after a failure.
const RECONNECT: Duration = Duration::from_secs(1);

/// The channel appends are announced on.
pub const CHANNEL: &str = "berth_events";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS berth_meta (key text PRIMARY KEY, value bigint NOT NULL);
INSERT INTO berth_meta VALUES ('next_version', 1), ('compacted_through', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS berth_events (version bigint PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS berth_purges (version bigint PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS berth_jobs (id text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS berth_edges (id text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS berth_quarantine (digest text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE IF NOT EXISTS berth_pulls (region text NOT NULL, start bigint NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (region, start));
CREATE TABLE IF NOT EXISTS berth_pull_batches (edge text PRIMARY KEY, recent bigint[] NOT NULL);
";

type Work = Box<dyn FnOnce(&mut Client) + Send>;

/// A store on PostgreSQL.
pub struct PgStore {
    work: Mutex<mpsc::Sender<Work>>,
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl PgStore {
    /// Connects to `url` and creates the tables if they are missing (one replica at a time).
    /// The connection lives on a thread of its own (the blocking client must never run inside
    /// an async runtime).
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        let (tx, rx) = mpsc::channel::<Work>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("berth-postgres".into())
            .spawn(move || {
                let mut client = match connect_and_migrate(&url) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(work) = rx.recv() {
                    // A connection lost (a PostgreSQL restart, a failover) is made again before
                    // the next piece of work; if that fails, the work fails and the next retries.
                    if client.is_closed() {
                        match connect_and_migrate(&url) {
                            Ok(c) => client = c,
                            Err(e) => tracing::warn!(error = %e, "cannot reconnect to PostgreSQL"),
                        }
                    }
                    work(&mut client);
                }
            })
            .map_err(|e| StoreError::Db(e.to_string()))?;
        ready_rx.recv().map_err(|_| StoreError::Db("the PostgreSQL connection thread failed".into()))??;
        Ok(PgStore { work: Mutex::new(tx) })
    }

    /// Runs `f` on the connection's thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self.work.lock().send(Box::new(move |c: &mut Client| {
            let _ = tx.send(f(c));
        }));
        sent.map_err(|_| StoreError::Db("the PostgreSQL connection thread has stopped".into()))?;
        rx.recv().map_err(|_| StoreError::Db("the PostgreSQL connection thread has stopped".into()))?
    }

    fn all<T: DeserializeOwned + Send + 'static>(&self, sql: &'static str) -> Result<Vec<T>, StoreError> {
        self.call(move |c| c.query(sql, &[])?.iter().map(|r| parse(r.get::<_, &[u8]>(0))).collect())
    }
}

fn connect_and_migrate(url: &str) -> Result<Client, StoreError> {
    let mut client = Client::connect(url, NoTls)?;
    let mut t = client.transaction()?;
    t.execute("SELECT pg_advisory_xact_lock(7243071)", &[])?;
    t.batch_execute(SCHEMA)?;
    t.commit()?;
    Ok(client)
}

/// Listens for appends made through any replica: calls `heard(version)` for each
/// notification, and every `fallback` without one (a notification lost with a dropped
/// connection is then caught up), reconnecting after a failure. Runs on its own thread until
/// `heard` returns false.
pub fn listen(url: String, fallback: Duration, heard: impl Fn(Option<u64>) -> bool + Send + 'static) {
    let _ = std::thread::Builder::new().name("berth-postgres-listen".into()).spawn(move || loop {
        let mut client = match Client::connect(&url, NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for policy events on PostgreSQL: retrying");
                std::thread::sleep(RECONNECT.min(fallback));
                if !heard(None) {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(error = %e, "LISTEN failed: retrying");
            std::thread::sleep(RECONNECT.min(fallback));
            continue;
        }
        // Whatever was appended before LISTEN took effect.
        if !heard(None) {
            return;
        }
        loop {
            let next = client.notifications().timeout_iter(fallback).next();
            let keep_going = match next {
                Ok(Some(n)) => heard(n.payload().parse().ok()),
                Ok(None) => heard(None),
                Err(e) => {
                    tracing::warn!(error = %e, "the PostgreSQL listener lost its connection: reconnecting");
                    break;
                }
            };
            if !keep_going {
                return;
            }
        }
    });
}

impl Store for PgStore {
    fn append(&self, action: Action, now_ms: u64) -> Result<PolicyEvent, StoreError> {
        self.call(move |c| {
            let mut t = c.transaction()?;
            let row =
                t.query_one("UPDATE berth_meta SET value = value + 1 WHERE key = 'next_version' RETURNING value - 1", &[])?;
            let version: i64 = row.get(0);
            let event = PolicyEvent { version: version as u64, action };
            t.execute("INSERT INTO berth_events VALUES ($1, $2)", &[&version, &json(&event)?])?;
            if let Action::Prefetch(order) = &event.action {
                let job = Job { id: order.job.clone(), order: order.clone(), version: version as u64, created_ms: now_ms };
                t.execute(
                    "INSERT INTO berth_jobs VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                    &[&job.id, &json(&job)?],
                )?;
            }
            if let Action::Quarantine(order) = &event.action {
                let key = order.digest.to_string();
                if order.lifted {
                    t.execute("DELETE FROM berth_quarantine WHERE digest = $1", &[&key])?;
                } else {
                    t.execute(
                        "INSERT INTO berth_quarantine VALUES ($1, $2) ON CONFLICT (digest) DO UPDATE SET body = EXCLUDED.body",
                        &[&key, &json(order)?],
                    )?;
                }
            }
            t.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &version.to_string()])?;
            t.commit()?;
            Ok(event)
        })
    }

    fn quarantined(&self) -> Result<Vec<QuarantineOrder>, StoreError> {
        self.all("SELECT body FROM berth_quarantine ORDER BY digest")
    }

    fn versions(&self) -> Result<(u64, u64), StoreError> {
        self.call(|c| {
            let rows = c.query("SELECT key, value FROM berth_meta", &[])?;
            let get = |k: &str| rows.iter().find(|r| r.get::<_, &str>(0) == k).map_or(0, |r| r.get::<_, i64>(1));
            Ok(((get("next_version") - 1).max(0) as u64, get("compacted_through").max(0) as u64))
        })
    }

    fn events_since(&self, since: u64, limit: usize) -> Result<Vec<PolicyEvent>, StoreError> {
        self.call(move |c| {
            let rows = c.query(
                "SELECT body FROM berth_events WHERE version > $1 ORDER BY version LIMIT $2",
                &[&(since as i64), &(limit as i64)],
            )?;
            rows.iter().map(|r| parse(r.get::<_, &[u8]>(0))).collect()
        })
    }

    fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let (latest, compacted) = self.versions()?;
        let through = latest.saturating_sub(keep);
        if through <= compacted {
            return Ok(0);
        }
        self.call(move |c| {
            let mut t = c.transaction()?;
            let through = through as i64;
            let rows = t.query("SELECT version, body FROM berth_events WHERE version <= $1", &[&through])?;
            for row in &rows {
                let event: PolicyEvent = parse(row.get::<_, &[u8]>(1))?;
                if let Action::Invalidate(inv) = &event.action {
                    if inv.digest.is_some() {
                        t.execute(
                            "INSERT INTO berth_purges VALUES ($1, $2) ON CONFLICT DO NOTHING",
                            &[&row.get::<_, i64>(0), &json(inv)?],
                        )?;
                    }
                }
            }
            let dropped = t.execute("DELETE FROM berth_events WHERE version <= $1", &[&through])?;
            t.execute(
                "UPDATE berth_meta SET value = GREATEST(value, $1) WHERE key = 'compacted_through'",
                &[&through],
            )?;
            t.commit()?;
            Ok(dropped)
        })
    }

    fn compacted_purges(&self) -> Result<Vec<Invalidation>, StoreError> {
        self.all("SELECT body FROM berth_purges ORDER BY version")
    }

    fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let row = c.query_opt("SELECT body FROM berth_jobs WHERE id = $1", &[&id])?;
            row.map(|r| parse(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.all("SELECT body FROM berth_jobs ORDER BY id")
    }

    fn put_edge(&self, edge: &EdgeRecord) -> Result<(), StoreError> {
        let (id, body) = (edge.id.clone(), json(edge)?);
        self.call(move |c| {
            c.execute(
                "INSERT INTO berth_edges VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = EXCLUDED.body",
                &[&id, &body],
            )?;
            Ok(())
        })
    }

    fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        self.all("SELECT body FROM berth_edges ORDER BY id")
    }

    fn claim_batch(&self, edge: &str, batch: u64) -> Result<bool, StoreError> {
        // One statement: a replica claiming the same batch at the same moment waits for the
        // row's lock, then sees the batch and changes nothing.
        let (edge, batch, keep) = (edge.to_owned(), batch as i64, super::RECENT_BATCHES as i32);
        self.call(move |c| {
            let changed = c.execute(
                "INSERT INTO berth_pull_batches VALUES ($1, ARRAY[$2::bigint]) ON CONFLICT (edge) DO UPDATE \
                 SET recent = (ARRAY[$2::bigint] || berth_pull_batches.recent)[1:$3] \
                 WHERE NOT ($2::bigint = ANY(berth_pull_batches.recent))",
                &[&edge, &batch, &keep],
            )?;
            Ok(changed == 1)
        })
    }

    fn edge(&self, id: &str) -> Result<Option<EdgeRecord>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            let row = c.query_opt("SELECT body FROM berth_edges WHERE id = $1", &[&id])?;
            row.map(|r| parse(r.get::<_, &[u8]>(0))).transpose()
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn merge_pulls(&self, buckets: &[(String, u64, Bucket)], names: usize, drop_before: u64) -> Result<(), StoreError> {
        let buckets = buckets.to_vec();
        self.call(move |c| {
            let mut t = c.transaction()?;
            for (region, start, bucket) in buckets {
                let start = start as i64;
                // The row exists before it is locked: two replicas creating the same bucket at
                // once then merge one after the other instead of overwriting.
                t.execute(
                    "INSERT INTO berth_pulls VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    &[&region, &start, &json(&Bucket::default())?],
                )?;
                let row = t.query_one(
                    "SELECT body FROM berth_pulls WHERE region = $1 AND start = $2 FOR UPDATE",
                    &[&region, &start],
                )?;
                let mut merged: Bucket = parse(row.get::<_, &[u8]>(0))?;
                for (name, n) in &bucket.repositories {
                    *merged.repositories.entry(name.clone()).or_default() += n;
                }
                for (name, n) in &bucket.manifests {
                    *merged.manifests.entry(name.clone()).or_default() += n;
                }
                t.execute(
                    "INSERT INTO berth_pulls VALUES ($1, $2, $3) ON CONFLICT (region, start) DO UPDATE SET body = EXCLUDED.body",
                    &[&region, &start, &json(&merged.bounded(names))?],
                )?;
            }
            t.execute("DELETE FROM berth_pulls WHERE start < $1", &[&(drop_before as i64)])?;
            t.commit()?;
            Ok(())
        })
    }

    fn pulls_since(&self, region: Option<&str>, since: u64) -> Result<Vec<(String, u64, Bucket)>, StoreError> {
        let region = region.map(str::to_owned);
        self.call(move |c| {
            let rows = c.query(
                "SELECT region, start, body FROM berth_pulls WHERE start >= $1 AND ($2::text IS NULL OR region = $2) ORDER BY region, start",
                &[&(since as i64), &region],
            )?;
            rows.iter()
                .map(|r| Ok((r.get::<_, String>(0), r.get::<_, i64>(1) as u64, parse(r.get::<_, &[u8]>(2))?)))
                .collect()
        })
    }
}
