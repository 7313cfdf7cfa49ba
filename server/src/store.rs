//! The embedded store: one SQLite file (WAL, synchronous=FULL) under the data
//! directory. All writes go through one writer thread that commits whatever
//! is queued in one transaction (group commit), so many concurrent alarms
//! share one fsync. Records are kept as encoded protocol messages plus the
//! columns needed to find them.
//!
//! Architecture Invariant: `Journal::append` returns only after the events
//! are committed to disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel::{bounded, Receiver, Sender};
use dispatch_core::{CaregiverId, ElderId, IdempotencyKey, IncidentEvent, IncidentId, Journal};
use prost::Message;
use proto::v1 as pb;
use rusqlite::{params, Connection, OptionalExtension};

use crate::convert::{event_kind_pb, incident_from_pb, incident_pb};

/// Largest number of write requests committed in one transaction.
const MAX_BATCH: usize = 512;

/// Tables made by older builds differ only in cost (`incident_events.seq` was
/// AUTOINCREMENT, `alarm_keys` had a rowid): events are never deleted, so
/// plain rowids stay increasing, and one key B-tree replaces two. Builds
/// before the journal table wrote one `incident_events` row per event; those
/// rows stay where they are, and new events go to `incident_journal`, one
/// row per append.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS elders (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS caregivers (id TEXT PRIMARY KEY, body BLOB NOT NULL,
    status INTEGER NOT NULL DEFAULT 1, lat REAL, lon REAL, seen_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, elder_id TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS devices_by_elder ON devices (elder_id);
CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, elder_id TEXT NOT NULL,
    caregiver_id TEXT, updated_ms INTEGER NOT NULL, body BLOB NOT NULL);
DROP INDEX IF EXISTS incidents_by_state;
CREATE TABLE IF NOT EXISTS incident_journal (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alarm_keys (key TEXT PRIMARY KEY, incident_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS plans (job_id TEXT PRIMARY KEY, month TEXT NOT NULL, created_ms INTEGER NOT NULL,
    phase INTEGER NOT NULL, message TEXT NOT NULL DEFAULT '', status INTEGER NOT NULL DEFAULT 0,
    input TEXT, plan TEXT, suggestions TEXT);
CREATE INDEX IF NOT EXISTS plans_by_month ON plans (month, created_ms);
CREATE TABLE IF NOT EXISTS visit_records (elder_id TEXT NOT NULL, date TEXT NOT NULL, caregiver_id TEXT NOT NULL,
    outcome INTEGER NOT NULL, at_ms INTEGER NOT NULL, note TEXT NOT NULL, PRIMARY KEY (elder_id, date));
";

const SCHEMA_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("store: stored record {what} cannot be decoded: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("store: the writer thread has stopped")]
    Closed,
    #[error("store {path} has schema version {found}; this build reads version {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: String },
}

/// One durable change.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Incident events, encoded by the appending thread (see [`journal_rows`]).
    Events(JournalRows),
    Elder(pb::Elder),
    Caregiver(pb::Caregiver),
    CaregiverState {
        id: String,
        status: i32,
        lat: f64,
        lon: f64,
        seen_ms: i64,
    },
    Device(pb::Device),
    /// A planning job was queued, failed or finished (`plan` set when finished).
    Plan(PlanRow),
    /// The latest record of one elder's visit on one date.
    Visit(pb::RecordVisitRequest),
}

/// One planning job as stored. `input`, `plan` and `suggestions` are JSON
/// documents, set once the job has finished.
#[derive(Debug, Clone, Default)]
pub struct PlanRow {
    pub job_id: String,
    pub month: String,
    pub created_ms: i64,
    /// A `pb::PlanPhase`.
    pub phase: i32,
    pub message: String,
    /// A `pb::CoverageStatus`.
    pub status: i32,
    pub input: Option<String>,
    pub plan: Option<String>,
    pub suggestions: Option<String>,
}

/// One append as stored: its events in one `incident_journal` row, each
/// incident's snapshot once (from its last event; earlier ones would be
/// overwritten in the same transaction) and the alarm keys it took in.
#[derive(Debug, Clone)]
pub struct JournalRows {
    at_ms: i64,
    /// An encoded [`JournalRecord`].
    events: Vec<u8>,
    snapshots: Vec<IncidentRow>,
    keys: Vec<(IdempotencyKey, i64)>,
}

/// An incident's snapshot row. The ids are the incident's own (shared, not
/// copied: this runs for every incident of every append).
#[derive(Debug, Clone)]
struct IncidentRow {
    id: i64,
    state: i32,
    elder_id: ElderId,
    caregiver: Option<CaregiverId>,
    updated_ms: i64,
    body: Vec<u8>,
}

/// The events of one append, as kept in `incident_journal.events`: the audit
/// trail of who was offered, declined, arrived and closed what, and when.
/// (The incidents' states are in their snapshots; this is the history.)
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventRecord>,
}

/// One incident event in a [`JournalRecord`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventRecord {
    #[prost(uint64, tag = "1")]
    pub incident_id: u64,
    /// A `pb::IncidentEventKind`.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
    #[prost(string, optional, tag = "4")]
    pub caregiver_id: Option<String>,
    #[prost(string, tag = "5")]
    pub note: String,
    #[prost(string, optional, tag = "6")]
    pub alarm_key: Option<String>,
}

/// Encodes `events` for the writer. Runs on the appending thread, so the
/// encoding of concurrent appends proceeds in parallel and the writer thread
/// only writes.
pub fn journal_rows(events: &[IncidentEvent]) -> JournalRows {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let mut snapshots = Vec::with_capacity(events.len());
    for e in events.iter().rev() {
        let id = e.incident.id.0 as i64;
        if seen.insert(id) {
            let body = incident_pb(&e.incident);
            snapshots.push(IncidentRow {
                id,
                state: body.state,
                elder_id: e.incident.elder.clone(),
                caregiver: e.incident.assigned.clone(),
                updated_ms: e.incident.updated_ms,
                body: body.encode_to_vec(),
            });
        }
    }
    let keys =
        events.iter().filter_map(|e| e.alarm_key.as_ref().map(|k| (k.clone(), e.incident.id.0 as i64))).collect();
    let record = JournalRecord {
        events: events
            .iter()
            .map(|e| EventRecord {
                incident_id: e.incident.id.0,
                kind: event_kind_pb(e.kind) as i32,
                at_ms: e.at_ms,
                caregiver_id: e.caregiver.as_ref().map(|c| c.as_str().to_owned()),
                note: e.note.clone(),
                alarm_key: e.alarm_key.as_ref().map(|k| k.as_str().to_owned()),
            })
            .collect(),
    };
    let at_ms = events.iter().map(|e| e.at_ms).max().unwrap_or(0);
    JournalRows { at_ms, events: record.encode_to_vec(), snapshots, keys }
}

/// Where the outcome of one write goes, called on the writer thread.
type Done = dispatch_core::AppendDone;

struct Request {
    op: WriteOp,
    done: Option<Done>,
}

/// The answer to one write, waited for by its sender. The waiter sleeps at
/// once instead of spinning first (as a channel receive does): on two cores
/// spinning waiters took the core the writer needed (17% of the server's CPU
/// in a stream run went to `sched_yield`).
#[derive(Default)]
struct Reply {
    answer: parking_lot::Mutex<Option<Result<(), String>>>,
    ready: parking_lot::Condvar,
}

impl Reply {
    fn set(&self, res: Result<(), String>) {
        *self.answer.lock() = Some(res);
        self.ready.notify_one();
    }

    fn wait(&self) -> Result<(), String> {
        let mut answer = self.answer.lock();
        loop {
            if let Some(res) = answer.take() {
                return res;
            }
            self.ready.wait(&mut answer);
        }
    }
}

impl Drop for Request {
    /// A request dropped unanswered (the writer stopped, or never received
    /// it) answers "closed", so no sender waits forever.
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(Err(StoreError::Closed.to_string()));
        }
    }
}

#[allow(clippy::large_enum_variant)] // Stop is sent once
enum Msg {
    Write(Request),
    /// Commit what is queued before this and stop.
    Stop,
}

/// A caregiver with its stored duty status (a `pb::CaregiverStatus`), last
/// position and when it was seen.
pub type StoredCaregiver = (pb::Caregiver, i32, Option<(f64, f64)>, i64);

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub elders: Vec<pb::Elder>,
    pub caregivers: Vec<StoredCaregiver>,
    pub devices: Vec<pb::Device>,
    pub incidents: Vec<dispatch_core::Incident>,
    pub keys: Vec<(IdempotencyKey, IncidentId)>,
    /// Planning jobs, oldest first.
    pub plans: Vec<PlanRow>,
    pub visits: Vec<pb::RecordVisitRequest>,
}

/// Handle to the store; cheap to clone, shared by the handlers and the dispatcher.
#[derive(Clone)]
pub struct Store {
    tx: Sender<Msg>,
    path: PathBuf,
    /// A read connection for records no longer held in memory (WAL lets it
    /// read while the writer commits).
    reader: Arc<parking_lot::Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Owns the writer thread.
pub struct StoreWriter {
    tx: Sender<Msg>,
    handle: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Commits everything queued so far, stops the writer and closes the
    /// database; later writes through any `Store` handle fail.
    pub fn close(mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Keep the working set in memory: 256 MiB of page cache (a negative size
    // is KiB) and reads through mmap, so inserts do not re-read pages with
    // syscalls; a checkpoint every 16k pages (64 MiB of WAL) instead of 1k.
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) `dir/anxin.db`, reads everything back, and
    /// starts the writer thread.
    pub fn open(dir: &Path) -> Result<(Store, StoreWriter, Snapshot), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
        })?;
        let path = dir.join("anxin.db");
        let conn = open_conn(&path)?;
        conn.execute_batch(SCHEMA)?;
        let version: Option<String> =
            conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional()?;
        match version {
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION])?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(found) => return Err(StoreError::Version { path, found }),
        }
        let snapshot = read_all(&conn)?;
        let reader = open_conn(&path)?;
        let (tx, rx) = bounded::<Msg>(16_384);
        let handle = std::thread::Builder::new()
            .name("anxin-store".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        let reader = Arc::new(parking_lot::Mutex::new(reader));
        Ok((Store { tx: tx.clone(), path, reader }, StoreWriter { tx, handle: Some(handle) }, snapshot))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `op` and waits until it is committed.
    pub fn write(&self, op: WriteOp) -> Result<(), String> {
        let reply = Arc::new(Reply::default());
        let answer = reply.clone();
        self.write_then(op, Box::new(move |res| answer.set(res)));
        reply.wait()
    }

    /// Queues `op`; `done` is called on the writer thread once it is
    /// committed (or failed, or the store stopped). Waits only if the queue
    /// is full.
    fn write_then(&self, op: WriteOp, done: Done) {
        // A request the channel refuses is dropped, which answers "closed".
        let _ = self.tx.send(Msg::Write(Request { op, done: Some(done) }));
    }

    /// Queues `op` without waiting (for state that is refreshed anyway, such
    /// as last positions). Dropped only if the store has stopped.
    pub fn write_later(&self, op: WriteOp) {
        let _ = self.tx.try_send(Msg::Write(Request { op, done: None }));
    }
}

impl Journal for Store {
    fn append(&self, events: &[IncidentEvent]) -> Result<(), String> {
        self.write(WriteOp::Events(journal_rows(events)))
    }

    /// Encodes on the calling thread; `done` runs on the writer thread once
    /// the events are committed, so no thread waits for the commit.
    fn append_then(&self, events: &[IncidentEvent], done: Done) {
        self.write_then(WriteOp::Events(journal_rows(events)), done);
    }

    fn load(&self, id: IncidentId) -> Option<dispatch_core::Incident> {
        let conn = self.reader.lock();
        let body: Option<Vec<u8>> = conn
            .query_row("SELECT body FROM incidents WHERE id = ?1", [id.0 as i64], |r| r.get(0))
            .optional()
            .map_err(|e| tracing::error!(incident = %id, error = %e, "reading a closed incident failed"))
            .ok()
            .flatten();
        let p: pb::Incident = decode("incident", &id.to_string(), &body?)
            .map_err(|e| tracing::error!(error = %e, "stored incident cannot be decoded"))
            .ok()?;
        incident_from_pb(&p).ok()
    }

    fn load_by_key(&self, key: &IdempotencyKey) -> Option<dispatch_core::Incident> {
        let id: Option<i64> = {
            let conn = self.reader.lock();
            conn.query_row("SELECT incident_id FROM alarm_keys WHERE key = ?1", [key.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| tracing::error!(key = %key, error = %e, "reading an alarm key failed"))
                .ok()
                .flatten()
        };
        self.load(IncidentId(id? as u64))
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Msg>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut stop = false;
    while !stop {
        match rx.recv() {
            Ok(Msg::Write(first)) => batch.push(first),
            Ok(Msg::Stop) | Err(_) => break,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Write(r)) => batch.push(r),
                Ok(Msg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, batch.iter().map(|r| &r.op));
        match result {
            Ok(()) => batch.drain(..).for_each(|r| reply(r, Ok(()))),
            Err(_) if batch.len() > 1 => {
                // One bad write must not fail its neighbours: retry one by one.
                for r in batch.drain(..) {
                    let res = commit(&mut conn, std::iter::once(&r.op)).map_err(|e| e.to_string());
                    reply(r, res);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "store write failed");
                batch.drain(..).for_each(|r| reply(r, Err(msg.clone())));
            }
        }
    }
}

fn reply(mut r: Request, res: Result<(), String>) {
    if let Some(done) = r.done.take() {
        done(res);
    }
}

fn commit<'a>(conn: &mut Connection, ops: impl Iterator<Item = &'a WriteOp>) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for op in ops {
        apply(&tx, op)?;
    }
    tx.commit()?;
    Ok(())
}

fn apply(tx: &rusqlite::Transaction<'_>, op: &WriteOp) -> Result<(), StoreError> {
    match op {
        WriteOp::Events(rows) => {
            tx.prepare_cached("INSERT INTO incident_journal (at_ms, events) VALUES (?1, ?2)")?
                .execute(params![rows.at_ms, rows.events])?;
            let mut key = tx.prepare_cached("INSERT OR IGNORE INTO alarm_keys (key, incident_id) VALUES (?1, ?2)")?;
            for (k, id) in &rows.keys {
                key.execute(params![k.as_str(), id])?;
            }
            let mut inc = tx.prepare_cached(
                "INSERT INTO incidents (id, state, elder_id, caregiver_id, updated_ms, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, caregiver_id = excluded.caregiver_id,
                 updated_ms = excluded.updated_ms, body = excluded.body",
            )?;
            for i in &rows.snapshots {
                let caregiver = i.caregiver.as_ref().map(|c| c.as_str());
                inc.execute(params![i.id, i.state, i.elder_id.as_str(), caregiver, i.updated_ms, i.body])?;
            }
        }
        WriteOp::Elder(e) => {
            tx.prepare_cached(
                "INSERT INTO elders (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![e.id, e.encode_to_vec()])?;
        }
        WriteOp::Caregiver(c) => {
            tx.prepare_cached(
                "INSERT INTO caregivers (id, body) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            )?
            .execute(params![c.id, c.encode_to_vec()])?;
        }
        WriteOp::CaregiverState { id, status, lat, lon, seen_ms } => {
            tx.prepare_cached("UPDATE caregivers SET status = ?2, lat = ?3, lon = ?4, seen_ms = ?5 WHERE id = ?1")?
                .execute(params![id, status, lat, lon, seen_ms])?;
        }
        WriteOp::Device(d) => {
            tx.prepare_cached(
                "INSERT INTO devices (id, elder_id, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET elder_id = excluded.elder_id, body = excluded.body",
            )?
            .execute(params![d.id, d.elder_id, d.encode_to_vec()])?;
        }
        WriteOp::Plan(p) => {
            tx.prepare_cached(
                "INSERT INTO plans (job_id, month, created_ms, phase, message, status, input, plan, suggestions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (job_id) DO UPDATE SET phase = excluded.phase, message = excluded.message,
                 status = excluded.status, input = excluded.input, plan = excluded.plan,
                 suggestions = excluded.suggestions",
            )?
            .execute(params![
                p.job_id,
                p.month,
                p.created_ms,
                p.phase,
                p.message,
                p.status,
                p.input,
                p.plan,
                p.suggestions
            ])?;
        }
        WriteOp::Visit(v) => {
            tx.prepare_cached(
                "INSERT INTO visit_records (elder_id, date, caregiver_id, outcome, at_ms, note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (elder_id, date) DO UPDATE SET caregiver_id = excluded.caregiver_id,
                 outcome = excluded.outcome, at_ms = excluded.at_ms, note = excluded.note",
            )?
            .execute(params![v.elder_id, v.date, v.caregiver_id, v.outcome, v.at_unix_ms, v.note])?;
        }
    }
    Ok(())
}

fn decode<M: Message + Default>(what: &str, id: &str, body: &[u8]) -> Result<M, StoreError> {
    M::decode(body).map_err(|e| StoreError::Corrupt { what: format!("{what} {id}"), reason: e.to_string() })
}

fn read_all(conn: &Connection) -> Result<Snapshot, StoreError> {
    let mut snap = Snapshot::default();
    let mut st = conn.prepare("SELECT id, body FROM elders ORDER BY id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (id, body) = row?;
        snap.elders.push(decode("elder", &id, &body)?);
    }
    let mut st = conn.prepare("SELECT id, body, status, lat, lon, seen_ms FROM caregivers ORDER BY id")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i32>(2)?,
            r.get::<_, Option<f64>>(3)?,
            r.get::<_, Option<f64>>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    for row in rows {
        let (id, body, status, lat, lon, seen) = row?;
        let pos = lat.zip(lon);
        snap.caregivers.push((decode("caregiver", &id, &body)?, status, pos, seen));
    }
    let mut st = conn.prepare("SELECT id, body FROM devices ORDER BY id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (id, body) = row?;
        snap.devices.push(decode("device", &id, &body)?);
    }
    let mut st = conn.prepare("SELECT id, body FROM incidents ORDER BY id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (id, body) = row?;
        let p: pb::Incident = decode("incident", &id.to_string(), &body)?;
        let inc = incident_from_pb(&p)
            .map_err(|e| StoreError::Corrupt { what: format!("incident {id}"), reason: e.to_string() })?;
        snap.incidents.push(inc);
    }
    let mut st = conn.prepare("SELECT key, incident_id FROM alarm_keys")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (key, id) = row?;
        let key = IdempotencyKey::parse("key", &key)
            .map_err(|e| StoreError::Corrupt { what: format!("alarm key {key}"), reason: e.to_string() })?;
        snap.keys.push((key, IncidentId(id as u64)));
    }
    let mut st = conn.prepare(
        "SELECT job_id, month, created_ms, phase, message, status, input, plan, suggestions FROM plans
         ORDER BY created_ms, job_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok(PlanRow {
            job_id: r.get(0)?,
            month: r.get(1)?,
            created_ms: r.get(2)?,
            phase: r.get(3)?,
            message: r.get(4)?,
            status: r.get(5)?,
            input: r.get(6)?,
            plan: r.get(7)?,
            suggestions: r.get(8)?,
        })
    })?;
    for row in rows {
        snap.plans.push(row?);
    }
    let mut st =
        conn.prepare("SELECT elder_id, date, caregiver_id, outcome, at_ms, note FROM visit_records ORDER BY date")?;
    let rows = st.query_map([], |r| {
        Ok(pb::RecordVisitRequest {
            elder_id: r.get(0)?,
            date: r.get(1)?,
            caregiver_id: r.get(2)?,
            outcome: r.get(3)?,
            at_unix_ms: r.get(4)?,
            note: r.get(5)?,
        })
    })?;
    for row in rows {
        snap.visits.push(row?);
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch_core::{Alarm, AlarmKind, DispatchConfig, Dispatcher, ElderId, GeoPoint, IncidentState};

    #[test]
    fn writes_survive_reopen_and_group_commit_serves_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, snap) = Store::open(dir.path()).unwrap();
        assert!(snap.elders.is_empty());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let e = pb::Elder { id: format!("E{t}-{i}"), name: "张三".into(), ..Default::default() };
                        store.write(WriteOp::Elder(e)).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(store);
        writer.close();
        let (_store, _w, snap) = Store::open(dir.path()).unwrap();
        assert_eq!(snap.elders.len(), 200);
        assert_eq!(snap.elders[0].name, "张三");
    }

    /// A dispatcher journaling to `store`, with nobody registered.
    fn dispatcher_on(store: &Store, config: DispatchConfig) -> Dispatcher {
        let sink = Arc::new(dispatch_core::NoSink);
        Dispatcher::new(config, Arc::new(store.clone()), sink, Arc::new(dispatch_core::SystemClock))
    }

    fn alarm(key: &IdempotencyKey, kind: AlarmKind) -> Alarm {
        Alarm {
            key: key.clone(),
            elder: ElderId::parse("elder", "E1").unwrap(),
            device: None,
            kind,
            location: GeoPoint::new("p", 43.88, 125.37).unwrap(),
            occurred_ms: 0,
            detail: String::new(),
        }
    }

    /// Every event of an append is in its journal row, in order, with its
    /// alarm key; the stored snapshot is the incident's last state.
    #[test]
    fn journal_rows_keep_every_event_and_the_last_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _) = Store::open(dir.path()).unwrap();
        let d = dispatcher_on(&store, DispatchConfig::default());
        let key = IdempotencyKey::parse("key", "gw-1/7").unwrap();
        let inc = d.raise(alarm(&key, AlarmKind::Fall)).unwrap().incident;
        assert_eq!(inc.state, IncidentState::Escalated, "nobody registered");
        drop((d, store));
        writer.close();
        let conn = Connection::open(dir.path().join("anxin.db")).unwrap();
        let (at, body): (i64, Vec<u8>) =
            conn.query_row("SELECT at_ms, events FROM incident_journal", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        let record = JournalRecord::decode(&body[..]).unwrap();
        let kinds: Vec<i32> = record.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds.first(), Some(&(pb::IncidentEventKind::Created as i32)));
        assert_eq!(kinds.last(), Some(&(pb::IncidentEventKind::Escalated as i32)));
        assert_eq!(record.events[0].alarm_key.as_deref(), Some("gw-1/7"));
        assert!(record.events.iter().all(|e| e.incident_id == inc.id.0));
        assert_eq!(at, record.events.iter().map(|e| e.at_ms).max().unwrap());
        let (_s, _w, snap) = Store::open(dir.path()).unwrap();
        assert_eq!(snap.incidents.len(), 1);
        assert_eq!(snap.incidents[0].state, IncidentState::Escalated, "the last event's snapshot");
        assert_eq!(snap.keys, vec![(key, inc.id)]);
    }

    /// A key the dispatcher has forgotten (past its window) is still found
    /// by key through the store, which is what `GetIncident` and
    /// `anxin-loadtest verify` rely on; a write after the writer stopped
    /// fails instead of waiting forever.
    #[test]
    fn forgotten_keys_are_read_back_and_writes_after_close_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _) = Store::open(dir.path()).unwrap();
        let d = dispatcher_on(&store, DispatchConfig { key_window_ms: 0, ..Default::default() });
        let key = IdempotencyKey::parse("key", "gw-1/42").unwrap();
        let alarm = alarm(&key, AlarmKind::LowBattery);
        let inc = d.raise(alarm.clone()).unwrap().incident;
        assert_eq!(inc.state, IncidentState::Escalated, "nobody registered");
        d.cancel(inc.id, "false alarm").unwrap();
        d.tick();
        assert_eq!(d.incident_by_key(&key).map(|i| i.id), Some(inc.id), "read back from the store");
        assert!(!d.raise(alarm).unwrap().duplicate, "the dispatcher forgot the key");
        drop(d);
        writer.close();
        assert!(store.write(WriteOp::Elder(pb::Elder { id: "E9".into(), ..Default::default() })).is_err());
    }
}
