//! The embedded store: two SQLite files (WAL) under the data directory.
//! `anxin.db` (synchronous=FULL) holds the registry, plans, visit records and
//! the incident journal; all its writes go through one writer thread that
//! commits whatever is queued in one transaction (group commit), so many
//! concurrent alarms share one fsync. Records are kept as encoded protocol
//! messages plus the columns needed to find them.
//!
//! Incident changes are durable as one `incident_journal` row per append:
//! the events (the audit trail) and the snapshot of every incident they
//! changed. The `incidents` and `alarm_keys` tables, which reads by id and by
//! key use, live in `incidents.db` and are brought up to date from those
//! rows at most every [`FLUSH_INTERVAL`] by a flusher thread of their own (an
//! incident changed many times in that while is written once, where writing
//! every change cost a random page per change). Their own file and thread
//! keep those page writes out of the commits appends wait for, and their
//! commits need no fsync (synchronous=NORMAL): the mark of the last journal
//! row flushed commits with the rows, so a flush lost to a power cut is
//! replayed. Until a flush lands, reads find the rows in memory, and a
//! restart replays the journal rows written after the mark.
//!
//! Architecture Invariant: `Journal::append` returns only after the events
//! are committed to disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use dispatch_core::{CaregiverId, ElderId, IdempotencyKey, IncidentEvent, IncidentId, Journal};
use prost::bytes::Bytes;
use prost::Message;
use proto::v1 as pb;
use rusqlite::{params, Connection, OptionalExtension};

use crate::convert::{event_kind_pb, incident_from_pb, incident_pb};

/// Largest number of write requests committed in one transaction.
const MAX_BATCH: usize = 512;

/// Incident snapshots and alarm keys wait in memory at most this long (or
/// until [`FLUSH_MAX`] rows wait) before they are written to their tables.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const FLUSH_MAX: usize = 100_000;
/// Rows waiting beyond which appends wait for the flusher (see
/// `Writer::commit_batch`), in flushes' worth of [`FLUSH_MAX`].
const FLUSH_HARD_MAX_FACTOR: usize = 10;
/// Rows of a flush per transaction of the tables' file. The chunks of a
/// flush are spread over half its interval, so that the flusher takes the
/// cores in short turns rather than in one burst a second.
const FLUSH_CHUNK: usize = 512;

/// The `meta` key holding the last journal row whose snapshots and keys are
/// in their tables: a restart replays the rows after it.
const FLUSHED_THROUGH: &str = "journal_flushed_through";

/// The main file (`anxin.db`). Tables made by older builds differ only in
/// cost (`incident_events.seq` was AUTOINCREMENT): events are never deleted,
/// so plain rowids stay increasing. Builds before the journal table wrote
/// one `incident_events` row per event; those rows stay where they are, and
/// new events go to `incident_journal`, one row per append. Builds before
/// schema version 3 kept `incidents` and `alarm_keys` here too: they move
/// to the tables' file on open (see `move_tables`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS elders (id TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS caregivers (id TEXT PRIMARY KEY, body BLOB NOT NULL,
    status INTEGER NOT NULL DEFAULT 1, lat REAL, lon REAL, seen_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, elder_id TEXT NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS devices_by_elder ON devices (elder_id);
CREATE TABLE IF NOT EXISTS incident_journal (seq INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS plans (job_id TEXT PRIMARY KEY, month TEXT NOT NULL, created_ms INTEGER NOT NULL,
    phase INTEGER NOT NULL, message TEXT NOT NULL DEFAULT '', status INTEGER NOT NULL DEFAULT 0,
    input TEXT, plan TEXT, suggestions TEXT);
CREATE INDEX IF NOT EXISTS plans_by_month ON plans (month, created_ms);
CREATE TABLE IF NOT EXISTS visit_records (elder_id TEXT NOT NULL, date TEXT NOT NULL, caregiver_id TEXT NOT NULL,
    outcome INTEGER NOT NULL, at_ms INTEGER NOT NULL, note TEXT NOT NULL, PRIMARY KEY (elder_id, date));
";

/// The tables' file (`incidents.db`): the incident snapshots and alarm keys
/// flushed from the journal, and the mark of the last journal row flushed.
/// (Alarm keys of builds before the journal table had a rowid as well;
/// their rows move here like the others.)
const TABLES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, elder_id TEXT NOT NULL,
    caregiver_id TEXT, updated_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS alarm_keys (key TEXT PRIMARY KEY, incident_id INTEGER NOT NULL) WITHOUT ROWID;
";

const TABLES_FILE: &str = "incidents.db";

/// 2: incident snapshots and keys reach their tables from the journal; 3:
/// those tables are in their own file, written by their own thread (see the
/// module doc).
const SCHEMA_VERSION: &str = "3";

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
    #[error("store {path} has schema version {found}; this build reads versions 1 to {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: String },
}

impl StoreError {
    /// An I/O failure while opening the store at `path` (its directory, its threads).
    fn io(path: &Path, e: std::io::Error) -> Self {
        StoreError::Open { path: path.to_owned(), source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)) }
    }
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

/// One append as stored: one `incident_journal` row holding its events and
/// each incident's snapshot once (from its last event; earlier ones are
/// superseded in the same append), and, for the tables, the same snapshots
/// and the alarm keys it took in.
#[derive(Debug, Clone)]
pub struct JournalRows {
    at_ms: i64,
    /// An encoded [`JournalRecord`].
    record: Vec<u8>,
    snapshots: Vec<IncidentRow>,
    keys: Vec<(IdempotencyKey, i64)>,
}

/// An incident's row in `incidents`. The ids are the incident's own (shared,
/// not copied: this runs for every incident of every append), the body is
/// shared with the journal record.
#[derive(Debug, Clone)]
struct IncidentRow {
    id: i64,
    state: i32,
    elder_id: ElderId,
    caregiver: Option<CaregiverId>,
    updated_ms: i64,
    /// An encoded `pb::Incident`.
    body: Bytes,
}

impl IncidentRow {
    /// `inc`'s row: `state` and `body` are its protocol form's.
    fn of(inc: &dispatch_core::Incident, state: i32, body: Bytes) -> Self {
        IncidentRow {
            id: inc.id.0 as i64,
            state,
            elder_id: inc.elder.clone(),
            caregiver: inc.assigned.clone(),
            updated_ms: inc.updated_ms,
            body,
        }
    }
}

/// One append as kept in `incident_journal.events`: the events (the audit
/// trail of who was offered, declined, arrived and closed what, and when)
/// and the snapshots of the incidents they left, which a restart replays.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JournalRecord {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<EventRecord>,
    /// Encoded `pb::Incident`s, one per incident changed. (Rows written by
    /// builds before the flush have none: those builds wrote the tables.)
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub snapshots: Vec<Bytes>,
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
    let mut seen =
        std::collections::HashSet::with_capacity_and_hasher(events.len(), foldhash::fast::RandomState::default());
    let mut snapshots = Vec::with_capacity(events.len());
    for e in events.iter().rev() {
        if seen.insert(e.incident.id) {
            let p = incident_pb(&e.incident);
            snapshots.push(IncidentRow::of(&e.incident, p.state, p.encode_to_vec().into()));
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
        snapshots: snapshots.iter().map(|r| r.body.clone()).collect(),
    };
    let at_ms = events.iter().map(|e| e.at_ms).max().unwrap_or(0);
    JournalRows { at_ms, record: record.encode_to_vec(), snapshots, keys }
}

/// Maps of the writer's hot path, hashed with foldhash (SipHash was a few
/// percent of the writer thread).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Incident rows and alarm keys committed in journal rows but not yet in
/// their tables.
#[derive(Default)]
struct Pending {
    incidents: FastMap<i64, IncidentRow>,
    keys: FastMap<IdempotencyKey, i64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.incidents.is_empty() && self.keys.is_empty()
    }

    /// Rows for the tables.
    fn len(&self) -> usize {
        self.incidents.len() + self.keys.len()
    }

    /// Takes in what a committed append leaves for the tables (later rows
    /// supersede earlier ones; the first incident of a key stays).
    fn absorb(&mut self, rows: &mut JournalRows) {
        for r in rows.snapshots.drain(..) {
            self.incidents.insert(r.id, r);
        }
        for (k, id) in rows.keys.drain(..) {
            self.keys.entry(k).or_insert(id);
        }
    }
}

/// What the tables lack, shared by the writer (which fills it), the flusher
/// (which empties it) and the readers (which look here before the tables).
#[derive(Default)]
struct Unflushed {
    pending: Pending,
    /// The last journal row committed: `pending` holds what it and the rows
    /// before it leave for the tables (or the tables have it already).
    through: i64,
    /// Being written by the flusher: still read from here until committed.
    flushing: Option<Arc<Pending>>,
}

impl Unflushed {
    fn incident(&self, id: i64) -> Option<Bytes> {
        let row = self.pending.incidents.get(&id).or_else(|| self.flushing.as_ref()?.incidents.get(&id));
        row.map(|r| r.body.clone())
    }

    fn key(&self, key: &IdempotencyKey) -> Option<i64> {
        self.pending.keys.get(key).or_else(|| self.flushing.as_ref()?.keys.get(key)).copied()
    }
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
    /// Stop as a killed process would: without flushing (tests).
    #[cfg(test)]
    Abandon,
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
    /// Incidents and keys committed but not yet in their tables.
    unflushed: Arc<parking_lot::Mutex<Unflushed>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Owns the writer and flusher threads.
pub struct StoreWriter {
    tx: Sender<Msg>,
    handle: Option<JoinHandle<()>>,
    flusher: Sender<FlushMsg>,
    flush_handle: Option<JoinHandle<()>>,
}

impl StoreWriter {
    /// Commits everything queued so far, stops the writer, flushes the
    /// tables and closes the database; later writes through any `Store`
    /// handle fail.
    pub fn close(self) {
        self.stop(Msg::Stop, FlushMsg::Stop);
    }

    /// Stops the writer after what is queued, without flushing the tables,
    /// as a killed process leaves the store.
    #[cfg(test)]
    fn abandon(self) {
        self.stop(Msg::Abandon, FlushMsg::Abandon);
    }

    /// The writer first, so that the flusher's last flush has every append.
    fn stop(mut self, how: Msg, then: FlushMsg) {
        let _ = self.tx.send(how);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = self.flusher.send(then);
        if let Some(h) = self.flush_handle.take() {
            let _ = h.join();
        }
    }
}

/// A connection to `path` with the store's settings; `synchronous` is FULL
/// for the main file (a commit is durable when it returns) and NORMAL for
/// the tables' file (a commit is atomic and ordered, and may be lost to a
/// power cut: the journal has its rows, and the mark it commits with says
/// where a restart replays from).
fn open_conn(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|source| StoreError::Open { path: path.to_owned(), source })?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Keep the working set in memory: 256 MiB of page cache (a negative size
    // is KiB) and reads through mmap, so inserts do not re-read pages with
    // syscalls. A checkpoint every 1,000 pages (4 MiB of WAL, SQLite's
    // default): the commit that triggers one waits for it, and at 64 MiB that
    // wait (100-170 ms every few seconds) was the stream's p99 (BENCHMARKS).
    conn.pragma_update(None, "cache_size", -262_144)?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30)?;
    conn.pragma_update(None, "wal_autocheckpoint", 1_000)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) `dir/anxin.db` and `dir/incidents.db`,
    /// reads everything back, and starts the writer and flusher threads.
    pub fn open(dir: &Path) -> Result<(Store, StoreWriter, Snapshot), StoreError> {
        Store::open_flushing(dir, FLUSH_INTERVAL, FLUSH_MAX)
    }

    /// [`open`](Self::open) with the incident tables flushed every
    /// `interval`, or at once when `backlog` rows wait.
    fn open_flushing(
        dir: &Path,
        interval: Duration,
        backlog: usize,
    ) -> Result<(Store, StoreWriter, Snapshot), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let path = dir.join("anxin.db");
        let conn = open_conn(&path, "FULL")?;
        conn.execute_batch(SCHEMA)?;
        let version = meta(&conn, "schema_version")?;
        // Versions 1 and 2 kept the incident tables in the main file: they
        // move (see `move_tables`). Builds that know only older versions
        // refuse a newer store instead of missing its incidents.
        if let Some(found) = version.as_deref().filter(|v| !matches!(*v, "1" | "2" | SCHEMA_VERSION)) {
            return Err(StoreError::Version { path, found: found.to_owned() });
        }
        let tables_path = dir.join(TABLES_FILE);
        let tables = open_conn(&tables_path, "NORMAL")?;
        tables.execute_batch(TABLES_SCHEMA)?;
        move_tables(&conn, &tables_path)?;
        if version.as_deref() != Some(SCHEMA_VERSION) {
            set_meta(&conn, "schema_version", SCHEMA_VERSION)?;
        }
        // Journal rows after the last flush (the process stopped before it):
        // their incidents and keys go to the tables before anything is read.
        let (pending, through) = replay(&conn, &tables)?;
        let unflushed = Arc::new(parking_lot::Mutex::new(Unflushed { pending, through, flushing: None }));
        let taken = Arc::new(parking_lot::Condvar::new());
        let mut flusher =
            Flusher { conn: tables, unflushed: unflushed.clone(), interval, flush: None, taken: taken.clone() };
        flusher.flush_all(Duration::ZERO)?;
        let snapshot = read_all(&conn, &flusher.conn)?;
        let reader = Arc::new(parking_lot::Mutex::new(open_conn(&tables_path, "NORMAL")?));
        // One nudge waits at most: a backlog asks once until it is flushed.
        let (nudge, wake) = bounded::<FlushMsg>(1);
        let (tx, rx) = bounded::<Msg>(16_384);
        let writer = Writer { conn, unflushed: unflushed.clone(), nudge: nudge.clone(), taken, backlog };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(run).map_err(|e| StoreError::io(&path, e))
        };
        let flush_handle = spawn("anxin-flush", Box::new(move || flusher.run(wake)))?;
        let handle = spawn("anxin-store", Box::new(move || writer.run(rx)))?;
        let store = Store { tx: tx.clone(), path, reader, unflushed };
        let writer = StoreWriter { tx, handle: Some(handle), flusher: nudge, flush_handle: Some(flush_handle) };
        Ok((store, writer, snapshot))
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

    /// Queues `op` without waiting, for state that is refreshed or rebuilt
    /// anyway (last positions, a device's online mark, a plan's failure,
    /// which a restart finds unfinished and marks failed again). Dropped if
    /// the queue is full (the writer is behind: alarms come first) or the
    /// store has stopped; drops are counted and logged.
    pub fn write_later(&self, op: WriteOp) {
        static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Write(Request { op, done: None })) {
            let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(dropped = n + 1, "store queue full: a refreshable write was dropped");
            }
        }
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
        let unflushed = self.unflushed.lock().incident(id.0 as i64);
        let body: Bytes = match unflushed {
            Some(body) => body,
            None => {
                let conn = self.reader.lock();
                conn.query_row("SELECT body FROM incidents WHERE id = ?1", [id.0 as i64], |r| r.get::<_, Vec<u8>>(0))
                    .optional()
                    .map_err(|e| tracing::error!(incident = %id, error = %e, "reading a closed incident failed"))
                    .ok()
                    .flatten()?
                    .into()
            }
        };
        stored_incident("incident", &id.to_string(), &body)
            .map_err(|e| tracing::error!(error = %e, "stored incident cannot be decoded"))
            .ok()
            .map(|(inc, _)| inc)
    }

    fn load_by_key(&self, key: &IdempotencyKey) -> Option<dispatch_core::Incident> {
        let unflushed = self.unflushed.lock().key(key);
        let id: Option<i64> = unflushed.or_else(|| {
            let conn = self.reader.lock();
            conn.query_row("SELECT incident_id FROM alarm_keys WHERE key = ?1", [key.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| tracing::error!(key = %key, error = %e, "reading an alarm key failed"))
                .ok()
                .flatten()
        });
        self.load(IncidentId(id? as u64))
    }
}

/// The writer thread's state: its connection to the main file.
struct Writer {
    conn: Connection,
    unflushed: Arc<parking_lot::Mutex<Unflushed>>,
    /// Asks the flusher for a flush before its interval (a backlog).
    nudge: Sender<FlushMsg>,
    /// Notified when the flusher takes the pending rows.
    taken: Arc<parking_lot::Condvar>,
    /// Rows pending at which the flusher is asked to flush at once.
    backlog: usize,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
        let mut stop = false;
        while !stop {
            match rx.recv() {
                Ok(Msg::Write(first)) => batch.push(first),
                Ok(Msg::Stop) | Err(_) => break,
                #[cfg(test)]
                Ok(Msg::Abandon) => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Write(r)) => batch.push(r),
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    #[cfg(test)]
                    Ok(Msg::Abandon) => {
                        self.commit_batch(&mut batch);
                        return;
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch);
        }
    }

    /// Commits `batch` in one transaction (if that fails, the writes one by
    /// one, so that one bad write does not fail its neighbours), hands what
    /// committed appends leave for the tables to the flusher, then answers
    /// each request.
    fn commit_batch(&mut self, batch: &mut Vec<Request>) {
        if batch.is_empty() {
            return;
        }
        let (results, through) = match self.transact(batch.iter().map(|r| &r.op)) {
            Ok(through) => (vec![Ok(()); batch.len()], through),
            Err(e) if batch.len() == 1 => {
                tracing::error!(error = %e, "store write failed");
                (vec![Err(e.to_string())], None)
            }
            Err(_) => {
                let mut through = None;
                let results = batch
                    .iter()
                    .map(|r| {
                        let seq = self.transact(std::iter::once(&r.op)).map_err(|e| e.to_string())?;
                        through = through.max(seq);
                        Ok(())
                    })
                    .collect();
                (results, through)
            }
        };
        let pending = {
            let mut u = self.unflushed.lock();
            for (r, res) in batch.iter_mut().zip(&results) {
                if let (WriteOp::Events(rows), Ok(())) = (&mut r.op, res) {
                    u.pending.absorb(rows);
                }
            }
            u.through = u.through.max(through.unwrap_or(0));
            u.pending.len()
        };
        if pending >= self.backlog {
            let _ = self.nudge.try_send(FlushMsg::Now);
        }
        for (r, res) in batch.drain(..).zip(results) {
            reply(r, res);
        }
        let hard = self.backlog.saturating_mul(FLUSH_HARD_MAX_FACTOR);
        if pending >= hard {
            // The flusher is far behind (a sustained overload starves it: it
            // runs at nice 10). The next batch waits for it to take its rows,
            // a second at most, rather than memory growing without bound:
            // alarms back up into intake's bounds instead.
            let until = Instant::now() + Duration::from_secs(1);
            let mut u = self.unflushed.lock();
            while u.pending.len() >= hard && !self.taken.wait_until(&mut u, until).timed_out() {}
        }
    }

    /// One transaction of `ops`; the last journal row it wrote, if any.
    fn transact<'a>(&mut self, ops: impl Iterator<Item = &'a WriteOp>) -> Result<Option<i64>, StoreError> {
        let started = Instant::now();
        let tx = self.conn.transaction()?;
        let (mut n, mut through) = (0, None);
        for op in ops {
            if let Some(seq) = apply(&tx, op)? {
                through = Some(seq);
            }
            n += 1;
        }
        tx.commit()?;
        if started.elapsed() >= Duration::from_millis(50) {
            tracing::debug!(writes = n, ms = started.elapsed().as_millis() as u64, "slow store commit");
        }
        Ok(through)
    }
}

/// What the writer (and the store's owner) tell the flusher.
enum FlushMsg {
    /// A backlog: flush now rather than at the interval.
    Now,
    /// Flush what is left and stop.
    Stop,
    /// Stop without flushing, as a killed process would (tests).
    #[cfg(test)]
    Abandon,
}

/// The flusher thread's state: its connection to the tables' file and the
/// flush in progress (kept when a commit fails, and resumed).
struct Flusher {
    conn: Connection,
    unflushed: Arc<parking_lot::Mutex<Unflushed>>,
    interval: Duration,
    flush: Option<Flush>,
    taken: Arc<parking_lot::Condvar>,
}

impl Flusher {
    #[allow(clippy::while_let_loop)] // tests have a third way out: `Abandon`
    fn run(mut self, rx: Receiver<FlushMsg>) {
        lower_priority();
        loop {
            match rx.recv_timeout(self.interval) {
                Ok(FlushMsg::Now) | Err(RecvTimeoutError::Timeout) => {}
                Ok(FlushMsg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                #[cfg(test)]
                Ok(FlushMsg::Abandon) => return,
            }
            if let Err(e) = self.flush_all(self.interval / 2) {
                tracing::error!(error = %e, "writing incidents from the journal failed; tried again later");
            }
        }
        if let Err(e) = self.flush_all(Duration::ZERO) {
            tracing::error!(error = %e, "writing incidents from the journal at shutdown failed; the journal replays them");
        }
    }

    /// Writes everything the writer has handed over so far to the tables,
    /// `FLUSH_CHUNK` rows a transaction, the mark with the last, spread over
    /// `over` (pausing between chunks).
    fn flush_all(&mut self, over: Duration) -> Result<(), StoreError> {
        if self.flush.is_none() {
            self.flush = self.start_flush();
        }
        let Some(f) = self.flush.as_mut() else { return Ok(()) };
        let started = Instant::now();
        while f.done < f.len() {
            let tx = self.conn.transaction()?;
            let done = f.write(&tx, FLUSH_CHUNK)?;
            tx.commit()?;
            f.done = done;
            let chunks_left = (f.len() - f.done).div_ceil(FLUSH_CHUNK) as u32;
            if chunks_left > 0 {
                std::thread::sleep(over.saturating_sub(started.elapsed()) / (chunks_left + 1));
            }
        }
        tracing::debug!(
            incidents = f.ids.len(),
            keys = f.keys.len(),
            ms = started.elapsed().as_millis() as u64,
            "incident tables flushed from the journal"
        );
        self.flush = None;
        self.unflushed.lock().flushing = None;
        Ok(())
    }

    /// Takes what is pending for the tables (it stays readable as `flushing`).
    fn start_flush(&self) -> Option<Flush> {
        let (taken, through) = {
            let mut u = self.unflushed.lock();
            if u.pending.is_empty() {
                return None;
            }
            let taken = Arc::new(std::mem::take(&mut u.pending));
            u.flushing = Some(taken.clone());
            (taken, u.through)
        };
        self.taken.notify_all();
        let mut ids: Vec<i64> = taken.incidents.keys().copied().collect();
        ids.sort_unstable();
        let mut keys: Vec<IdempotencyKey> = taken.keys.keys().cloned().collect();
        keys.sort_unstable();
        Some(Flush { taken, ids, keys, done: 0, through })
    }
}

/// Lowers the calling thread's scheduling priority (nice 10): flushing the
/// tables is background work, and on two cores it should wait for the
/// threads that alarms wait for, not they for it.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: a plain system call; on Linux, PRIO_PROCESS with 0 names the
    // calling thread.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Rows taken from [`Pending`] for their tables, in B-tree order (so that
/// neighbours share pages), written a chunk per transaction.
struct Flush {
    taken: Arc<Pending>,
    ids: Vec<i64>,
    keys: Vec<IdempotencyKey>,
    /// Rows written so far: incidents first, then keys.
    done: usize,
    /// The last journal row whose snapshots and keys `taken` holds.
    through: i64,
}

impl Flush {
    fn len(&self) -> usize {
        self.ids.len() + self.keys.len()
    }

    /// Writes up to `n` more rows in `tx`, and with the last of them the mark
    /// a restart replays after; how many rows are written then.
    fn write(&self, tx: &rusqlite::Transaction<'_>, n: usize) -> Result<usize, StoreError> {
        let end = self.done.saturating_add(n).min(self.len());
        let mut inc = tx.prepare_cached(
            "INSERT INTO incidents (id, state, elder_id, caregiver_id, updated_ms, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state, caregiver_id = excluded.caregiver_id,
             updated_ms = excluded.updated_ms, body = excluded.body",
        )?;
        let mut key = tx.prepare_cached("INSERT OR IGNORE INTO alarm_keys (key, incident_id) VALUES (?1, ?2)")?;
        for i in self.done..end {
            if let Some(id) = self.ids.get(i) {
                let Some(r) = self.taken.incidents.get(id) else { continue };
                let caregiver = r.caregiver.as_ref().map(|c| c.as_str());
                inc.execute(params![r.id, r.state, r.elder_id.as_str(), caregiver, r.updated_ms, &r.body[..]])?;
            } else {
                let k = &self.keys[i - self.ids.len()];
                let Some(id) = self.taken.keys.get(k) else { continue };
                key.execute(params![k.as_str(), id])?;
            }
        }
        if end == self.len() {
            set_meta(tx, FLUSHED_THROUGH, &self.through.to_string())?;
        }
        Ok(end)
    }
}

/// Moves `incidents` and `alarm_keys` of a store made before schema
/// version 3 from the main file to the tables' file at `to`: rows and flush
/// mark in one transaction of that file, then the old tables go in one of
/// the main file (interrupted in between, the move is made again: the rows
/// replace themselves). Such a store without a flush mark was written by a
/// build that kept the tables up to date itself: its journal rows are all
/// in the tables.
fn move_tables(conn: &Connection, to: &Path) -> Result<(), StoreError> {
    let old: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('incidents', 'alarm_keys')",
        [],
        |r| r.get(0),
    )?;
    if old == 0 {
        return Ok(());
    }
    conn.execute("ATTACH DATABASE ?1 AS moved", [to.to_string_lossy()])?;
    let moved = conn.execute_batch(&format!(
        "BEGIN;
         INSERT OR REPLACE INTO moved.incidents (id, state, elder_id, caregiver_id, updated_ms, body)
             SELECT id, state, elder_id, caregiver_id, updated_ms, body FROM main.incidents;
         INSERT OR REPLACE INTO moved.alarm_keys (key, incident_id) SELECT key, incident_id FROM main.alarm_keys;
         INSERT OR REPLACE INTO moved.meta (key, value) SELECT key, value FROM main.meta WHERE key = '{FLUSHED_THROUGH}';
         INSERT OR IGNORE INTO moved.meta (key, value)
             SELECT '{FLUSHED_THROUGH}', coalesce(max(seq), 0) FROM main.incident_journal;
         COMMIT;
         BEGIN;
         DROP TABLE main.incidents;
         DROP TABLE main.alarm_keys;
         DELETE FROM main.meta WHERE key = '{FLUSHED_THROUGH}';
         COMMIT;"
    ));
    if moved.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn.execute("DETACH DATABASE moved", [])?;
    moved?;
    tracing::info!(to = %to.display(), "moved the incident tables to their own file");
    Ok(())
}

/// The incidents and keys of the journal rows written after the last flush
/// (all of them if the tables' file has no mark: it is new, or was lost),
/// and the last journal row.
fn replay(conn: &Connection, tables: &Connection) -> Result<(Pending, i64), StoreError> {
    let mark = meta(tables, FLUSHED_THROUGH)?;
    let mut through: i64 = match mark {
        Some(v) => v.parse().map_err(|_| StoreError::Corrupt { what: format!("meta {FLUSHED_THROUGH}"), reason: v })?,
        None => 0,
    };
    let mut pending = Pending::default();
    let mut st = conn.prepare("SELECT seq, events FROM incident_journal WHERE seq > ?1 ORDER BY seq")?;
    let rows = st.query_map([through], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    let mut replayed = 0;
    for row in rows {
        replayed += 1;
        let (seq, body) = row?;
        through = seq;
        let seq = seq.to_string();
        let record: JournalRecord = decode("journal row", &seq, &body)?;
        for e in &record.events {
            if let Some(k) = &e.alarm_key {
                let key = IdempotencyKey::parse("alarm_key", k)
                    .map_err(|e| StoreError::Corrupt { what: format!("journal row {seq}"), reason: e.to_string() })?;
                pending.keys.entry(key).or_insert(e.incident_id as i64);
            }
        }
        for body in record.snapshots {
            let (inc, state) = stored_incident("incident snapshot in journal row", &seq, &body)?;
            let row = IncidentRow::of(&inc, state, body);
            pending.incidents.insert(row.id, row);
        }
    }
    if replayed > 0 {
        tracing::info!(
            rows = replayed,
            incidents = pending.incidents.len(),
            keys = pending.keys.len(),
            "replayed the journal rows written after the last flush"
        );
    }
    Ok((pending, through))
}

fn reply(mut r: Request, res: Result<(), String>) {
    if let Some(done) = r.done.take() {
        done(res);
    }
}

/// Writes `op` in `tx`; for an append, the journal row's sequence number.
fn apply(tx: &rusqlite::Transaction<'_>, op: &WriteOp) -> Result<Option<i64>, StoreError> {
    match op {
        WriteOp::Events(rows) => {
            // The tables follow at the next flush.
            tx.prepare_cached("INSERT INTO incident_journal (at_ms, events) VALUES (?1, ?2)")?
                .execute(params![rows.at_ms, rows.record])?;
            return Ok(Some(tx.last_insert_rowid()));
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
    Ok(None)
}

fn decode<M: Message + Default>(what: &str, id: &str, body: &[u8]) -> Result<M, StoreError> {
    M::decode(body).map_err(|e| StoreError::Corrupt { what: format!("{what} {id}"), reason: e.to_string() })
}

/// A stored incident (a table row or a journal snapshot; `what` and `id`
/// name it in errors), with the state of its protocol form.
fn stored_incident(what: &str, id: &str, body: &[u8]) -> Result<(dispatch_core::Incident, i32), StoreError> {
    let p: pb::Incident = decode(what, id, body)?;
    let inc = incident_from_pb(&p)
        .map_err(|e| StoreError::Corrupt { what: format!("{what} {id}"), reason: e.to_string() })?;
    Ok((inc, p.state))
}

/// A `meta` value, if set.
fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional()?)
}

/// Sets a `meta` value (in a transaction too: it derefs to a connection).
fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// Everything in the main file, and the incidents and keys in `tables`.
fn read_all(conn: &Connection, tables: &Connection) -> Result<Snapshot, StoreError> {
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
    let mut st = tables.prepare("SELECT id, body FROM incidents ORDER BY id")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (id, body) = row?;
        snap.incidents.push(stored_incident("incident", &id.to_string(), &body)?.0);
    }
    let mut st = tables.prepare("SELECT key, incident_id FROM alarm_keys")?;
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
            required_skill: None,
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
        use pb::IncidentEventKind as K;
        assert_eq!(
            kinds,
            [K::Created, K::Escalated, K::FamilyNotified].map(|k| k as i32),
            "the ladder's family rung last"
        );
        assert_eq!(record.events[0].alarm_key.as_deref(), Some("gw-1/7"));
        assert!(record.events.iter().all(|e| e.incident_id == inc.id.0));
        assert_eq!(at, record.events.iter().map(|e| e.at_ms).max().unwrap());
        let (_s, _w, snap) = Store::open(dir.path()).unwrap();
        assert_eq!(snap.incidents.len(), 1);
        assert_eq!(snap.incidents[0].state, IncidentState::Escalated, "the last event's snapshot");
        assert_eq!(snap.keys, vec![(key, inc.id)]);
    }

    /// Incidents and keys committed in journal rows but not yet flushed to
    /// their tables are read from memory meanwhile; a store stopped without
    /// flushing (a killed process) replays them from the journal on open,
    /// once; a clean close flushes them.
    #[test]
    fn unflushed_incidents_are_read_meanwhile_and_replayed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let never = Duration::from_secs(3600);
        let (store, writer, _) = Store::open_flushing(dir.path(), never, FLUSH_MAX).unwrap();
        let d = dispatcher_on(&store, DispatchConfig::default());
        let (k1, k2) =
            (IdempotencyKey::parse("key", "gw-1/1").unwrap(), IdempotencyKey::parse("key", "gw-1/2").unwrap());
        let a = d.raise(alarm(&k1, AlarmKind::Fall)).unwrap().incident;
        let b = d.raise(alarm(&k2, AlarmKind::LowBattery)).unwrap().incident;
        d.cancel(b.id, "false alarm").unwrap();
        let rows = |dir: &Path| -> i64 {
            let conn = Connection::open(dir.join(TABLES_FILE)).unwrap();
            conn.query_row("SELECT (SELECT count(*) FROM incidents) + (SELECT count(*) FROM alarm_keys)", [], |r| {
                r.get(0)
            })
            .unwrap()
        };
        assert_eq!(rows(dir.path()), 0, "nothing flushed yet");
        assert_eq!(store.load(a.id).map(|i| i.state), Some(IncidentState::Escalated));
        assert_eq!(store.load_by_key(&k2).map(|i| (i.id, i.state)), Some((b.id, IncidentState::Cancelled)));
        drop((d, store));
        writer.abandon();
        assert_eq!(rows(dir.path()), 0, "a killed process flushes nothing");

        let (store, writer, snap) = Store::open_flushing(dir.path(), never, FLUSH_MAX).unwrap();
        let mut states: Vec<_> = snap.incidents.iter().map(|i| (i.id, i.state)).collect();
        states.sort_by_key(|s| s.0);
        assert_eq!(states, [(a.id, IncidentState::Escalated), (b.id, IncidentState::Cancelled)], "the last snapshots");
        let mut keys = snap.keys.clone();
        keys.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        assert_eq!(keys, [(k1.clone(), a.id), (k2, b.id)]);
        assert_eq!(rows(dir.path()), 4, "replayed into the tables on open");
        // Changes after the replay reach the tables at a clean close.
        let d = dispatcher_on(&store, DispatchConfig::default());
        d.restore(snap.incidents, snap.keys);
        d.cancel(a.id, "false alarm").unwrap();
        drop((d, store));
        writer.close();
        let (_s, _w, snap) = Store::open_flushing(dir.path(), never, FLUSH_MAX).unwrap();
        assert!(snap.incidents.iter().all(|i| i.state == IncidentState::Cancelled), "{:?}", snap.incidents);
        assert_eq!(snap.keys.len(), 2);
    }

    /// The flusher writes the tables on its own after the interval, with no
    /// further writes to prompt it, into their own file.
    #[test]
    fn the_tables_are_flushed_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _) = Store::open_flushing(dir.path(), Duration::from_millis(20), FLUSH_MAX).unwrap();
        let d = dispatcher_on(&store, DispatchConfig::default());
        let key = IdempotencyKey::parse("key", "gw-1/3").unwrap();
        d.raise(alarm(&key, AlarmKind::Smoke)).unwrap();
        assert_eq!(incident_rows_once(dir.path(), 1), 1, "flushed without a clean close");
        drop((d, store));
        writer.abandon();
    }

    /// Rows in the tables' `incidents` once there are `n` (or 30 s have
    /// passed: a flusher that never comes fails the caller's assertion).
    fn incident_rows_once(dir: &Path, n: i64) -> i64 {
        let conn = Connection::open(dir.join(TABLES_FILE)).unwrap();
        let rows = || -> i64 { conn.query_row("SELECT count(*) FROM incidents", [], |r| r.get(0)).unwrap_or(0) };
        let started = Instant::now();
        while rows() < n && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        rows()
    }

    /// A backlog of pending rows asks the flusher for a flush at once, long
    /// before its interval; appends go on meanwhile.
    #[test]
    fn a_backlog_is_flushed_before_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        // Every alarm leaves two rows (its incident and its key): a backlog from the first.
        let (store, writer, _) = Store::open_flushing(dir.path(), Duration::from_secs(3600), 2).unwrap();
        let d = dispatcher_on(&store, DispatchConfig::default());
        for i in 0..30 {
            let key = IdempotencyKey::parse("key", &format!("gw-3/{i}")).unwrap();
            let mut a = alarm(&key, AlarmKind::Smoke);
            a.elder = ElderId::parse("elder", &format!("E{i}")).unwrap();
            d.raise(a).unwrap();
        }
        assert_eq!(incident_rows_once(dir.path(), 30), 30, "flushed without waiting an hour");
        drop((d, store));
        writer.abandon();
    }

    /// Stores of schema versions 1 and 2 kept the incident tables in the
    /// main file: they open with their rows moved to the tables' file, the
    /// flush mark with them (version 1 had none: its journal rows were all in
    /// the tables), and are marked version 3; a version this build does not
    /// know is refused.
    #[test]
    fn older_stores_open_with_their_tables_moved_and_unknown_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, w, _) = Store::open(dir.path()).unwrap();
        let d = dispatcher_on(&store, DispatchConfig::default());
        let (k1, k2) =
            (IdempotencyKey::parse("key", "gw-2/1").unwrap(), IdempotencyKey::parse("key", "gw-2/2").unwrap());
        let a = d.raise(alarm(&k1, AlarmKind::Fall)).unwrap().incident;
        drop((d, store));
        w.close();
        // The layout of a version 1 or 2 store: the tables (and the mark, in
        // version 2) in the main file, nothing in the tables' file. The
        // incident's row says Cancelled and a second key is only in the old
        // table: what is read back comes from there.
        let old_layout = |version: &str, mark: Option<i64>| {
            let conn = Connection::open(dir.path().join("anxin.db")).unwrap();
            conn.execute_batch(
                "CREATE TABLE incidents (id INTEGER PRIMARY KEY, state INTEGER NOT NULL, elder_id TEXT NOT NULL,
                     caregiver_id TEXT, updated_ms INTEGER NOT NULL, body BLOB NOT NULL);
                 CREATE TABLE alarm_keys (key TEXT PRIMARY KEY, incident_id INTEGER NOT NULL) WITHOUT ROWID;",
            )
            .unwrap();
            let tables = Connection::open(dir.path().join(TABLES_FILE)).unwrap();
            let body: Vec<u8> =
                tables.query_row("SELECT body FROM incidents WHERE id = ?1", [a.id.0 as i64], |r| r.get(0)).unwrap();
            tables.execute_batch("DELETE FROM incidents; DELETE FROM alarm_keys; DELETE FROM meta;").unwrap();
            let mut inc = pb::Incident::decode(&body[..]).unwrap();
            inc.state = pb::IncidentState::Cancelled as i32;
            conn.execute(
                "INSERT INTO incidents (id, state, elder_id, caregiver_id, updated_ms, body) VALUES (?1, ?2, 'E1', NULL, 0, ?3)",
                params![a.id.0 as i64, inc.state, inc.encode_to_vec()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO alarm_keys (key, incident_id) VALUES (?1, ?2), (?3, ?2)",
                params![k1.as_str(), a.id.0 as i64, k2.as_str()],
            )
            .unwrap();
            conn.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [version]).unwrap();
            if let Some(m) = mark {
                set_meta(&conn, FLUSHED_THROUGH, &m.to_string()).unwrap();
            }
        };
        let reopened = || {
            let (_s, w, snap) = Store::open(dir.path()).unwrap();
            w.close();
            let conn = Connection::open(dir.path().join("anxin.db")).unwrap();
            let left: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master WHERE name IN ('incidents', 'alarm_keys')", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(left, 0, "the old tables are gone from the main file");
            assert_eq!(meta(&conn, "schema_version").unwrap().as_deref(), Some(SCHEMA_VERSION));
            let mut keys = snap.keys.clone();
            keys.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
            assert_eq!(keys, [(k1.clone(), a.id), (k2.clone(), a.id)]);
            assert_eq!(snap.incidents.len(), 1);
            snap.incidents[0].state
        };
        // Version 2 with its mark past the journal row: the moved row stands.
        old_layout("2", Some(1));
        assert_eq!(reopened(), IncidentState::Cancelled);
        // Version 2 with its mark before the journal row: the row is replayed over it.
        old_layout("2", Some(0));
        assert_eq!(reopened(), IncidentState::Escalated);
        // Version 1 has no mark: its journal rows count as flushed.
        old_layout("1", None);
        assert_eq!(reopened(), IncidentState::Cancelled);
        let conn = Connection::open(dir.path().join("anxin.db")).unwrap();
        conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'", []).unwrap();
        let err = Store::open(dir.path()).err().expect("version 4 refused");
        assert!(matches!(err, StoreError::Version { ref found, .. } if found == "4"), "{err}");
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
