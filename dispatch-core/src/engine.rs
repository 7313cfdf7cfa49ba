//! The dispatcher: intake (dedup and merge), matching, offers, the incident
//! life cycle and timers. Synchronous and IO-free: durability comes in through
//! [`Journal`], time through [`Clock`], fan-out through [`EventSink`].
//!
//! Locking discipline (no global lock): an idempotency-key cell may be held
//! while taking an incident lock, never the reverse; dashmap references are
//! always dropped before any incident lock is taken; caregivers are claimed
//! and released with atomics only. Intake stages alarms in runs that hold
//! their keys and incidents until the run's journal append lands; a thread
//! waits on a lock some run holds only while its own run holds nothing (else
//! the run ends first, and the alarm is paused holding nothing), so every
//! wait is on a run already handed to the journal, which finishing releases
//! without waiting on anything.
//!
//! Architecture Invariant: every state change is appended to the journal
//! before the caller hears of it and before it is published.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::SegQueue;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use parking_lot::lock_api::ArcMutexGuard;
use parking_lot::{Condvar, Mutex, RawMutex};

use crate::error::{DispatchError, Result};
use crate::geo::{GeoPoint, TravelModel};
use crate::incident::{Alarm, EventKind, Incident, IncidentEvent};
use crate::index::{Candidate, GridIndex, MatchFilter};
use crate::kpi::{KpiSnapshot, Kpis};
use crate::lifecycle::IncidentState;
use crate::roster::{CaregiverProfile, CaregiverSlot, SkillTable, SlotRef, StatusCounts};
use crate::types::{
    AlarmKind, CaregiverId, CaregiverStatus, DeviceId, ElderId, EscalationReason, IdempotencyKey, IncidentId, Outcome,
    Severity,
};
use crate::wheel::TimerWheel;

/// Where a journal reports the outcome of one [`Journal::append_then`].
pub type AppendDone = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

/// Durable storage of incident events. Implemented by `server` over its store.
pub trait Journal: Send + Sync {
    /// Makes `events` durable, all or nothing, before returning `Ok`.
    fn append(&self, events: &[IncidentEvent]) -> std::result::Result<(), String>;

    /// Starts making `events` durable and calls `done` with the outcome once
    /// they are, on whatever thread learns it (possibly before returning).
    /// `done` must be called exactly once. A journal with a writer thread
    /// overrides this so that no thread waits for the commit; the default
    /// appends and answers on the calling thread.
    fn append_then(&self, events: &[IncidentEvent], done: AppendDone) {
        done(self.append(events))
    }

    /// Reads back an incident that is no longer held in memory (closed and
    /// evicted), if the journal can.
    fn load(&self, _id: IncidentId) -> Option<Incident> {
        None
    }

    /// The incident an idempotency key led to, for a key no longer held in
    /// memory (past `key_window_ms`), if the journal can.
    fn load_by_key(&self, _key: &IdempotencyKey) -> Option<Incident> {
        None
    }
}

/// Receives every event after it is durable, in order per incident.
pub trait EventSink: Send + Sync {
    fn publish(&self, events: &[IncidentEvent]);
}

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock moved by hand, for tests and simulations.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(AtomicU64::new(start_ms.max(0) as u64))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms.max(0) as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst) as i64
    }
}

/// A journal that keeps nothing (in-memory runs and benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn append(&self, _: &[IncidentEvent]) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// A sink that drops every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSink;

impl EventSink for NoSink {
    fn publish(&self, _: &[IncidentEvent]) {}
}

/// Dispatch settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchConfig {
    /// How long a caregiver has to accept an offer.
    pub offer_timeout_ms: i64,
    /// A repeat of the same device (or elder, without a device) and kind within
    /// this window merges into the open incident.
    pub merge_window_ms: i64,
    /// How far to look for a caregiver.
    pub max_radius_m: f64,
    /// First rung of the escalation ladder: how far to look when nobody is
    /// free within `max_radius_m`.
    pub wide_radius_m: f64,
    /// Last rung: an escalated critical (urgent) incident that no dispatcher
    /// has taken on within this time gets an emergency-services (120/119)
    /// hand-off record. Routine incidents never do.
    pub handoff_critical_ms: i64,
    pub handoff_urgent_ms: i64,
    /// Severity lanes: alarms of a lane being taken in at once. A full
    /// routine lane parks new routine alarms as DEFERRED (durable, handled by
    /// `tick` when the lane has room); a full urgent lane makes new urgent
    /// alarms wait; the critical lane has no limit and is never shed.
    pub routine_lane: usize,
    pub urgent_lane: usize,
    /// Deferred routine incidents held at most; beyond it routine alarms are
    /// refused (`Overloaded`) and nothing of them is stored.
    pub max_deferred: usize,
    /// Closed incidents stay in memory this long (for consoles), then are
    /// read back from the journal when asked for.
    pub retain_closed_ms: i64,
    /// At most this many closed incidents stay in memory (the oldest go
    /// first): a storm of 10,000 alarms a second would otherwise hold
    /// millions for `retain_closed_ms`.
    pub max_closed_in_memory: usize,
    /// An idempotency key is remembered this long after the alarm (and at
    /// least while its incident is open): a retry within it returns the
    /// original incident; a key older than this is a new alarm. Lookups by
    /// key for consoles read the journal past it.
    pub key_window_ms: i64,
    /// Candidates fetched per match.
    pub candidates: usize,
    /// For an elder whose care needs a skill (a 失能 elder and nursing, say),
    /// a free caregiver holding it is offered before one who does not,
    /// unless the other would arrive more than this many seconds sooner:
    /// candidates rank by ETA, less this for holding the skill. Zero ranks
    /// by ETA alone.
    pub skill_slack_s: f64,
    /// Offers made before the incident is escalated as declined by all.
    pub max_offers: u32,
    /// Arrival is overdue after `eta * factor + slack` from acceptance: the
    /// console is alerted (ARRIVAL_OVERDUE).
    pub arrival_overdue_factor: f64,
    pub arrival_overdue_slack_ms: i64,
    /// An overdue arrival is alerted again this often...
    pub arrival_realert_ms: i64,
    /// ...and this long after it became overdue the incident is escalated
    /// (reason ARRIVAL_OVERDUE: the caregiver is released, the district
    /// supervisor queue takes it, and the ladder goes on from there).
    pub arrival_escalate_ms: i64,
    /// An incident on scene this long raises a console alert
    /// (ON_SCENE_OVERDUE), then again every `on_scene_realert_ms` until it is
    /// closed: never silently stuck.
    pub on_scene_alert_ms: i64,
    pub on_scene_realert_ms: i64,
    pub travel: TravelModel,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            offer_timeout_ms: 60_000,
            merge_window_ms: 120_000,
            max_radius_m: 30_000.0,
            wide_radius_m: 60_000.0,
            handoff_critical_ms: 180_000,
            handoff_urgent_ms: 900_000,
            // Places count alarms staged in batches too (a stream takes in up to
            // 1,024 at once): sized for ~10 ms of intake at a few 100k alarms/s.
            routine_lane: 4096,
            urgent_lane: 8192,
            max_deferred: 100_000,
            retain_closed_ms: 600_000,
            max_closed_in_memory: 100_000,
            key_window_ms: 86_400_000,
            candidates: 8,
            skill_slack_s: 180.0,
            max_offers: 5,
            arrival_overdue_factor: 2.0,
            arrival_overdue_slack_ms: 300_000,
            arrival_realert_ms: 300_000,
            arrival_escalate_ms: 900_000,
            on_scene_alert_ms: 7_200_000,
            on_scene_realert_ms: 1_800_000,
            travel: TravelModel::default(),
        }
    }
}

/// What intake did with an alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct RaiseOutcome {
    pub incident: Incident,
    /// The key was seen before: `incident` is the original.
    pub duplicate: bool,
    /// A repeat merged into an open incident.
    pub merged: bool,
}

/// Live view of one caregiver.
#[derive(Debug, Clone, PartialEq)]
pub struct CaregiverView {
    pub profile: CaregiverProfile,
    pub status: CaregiverStatus,
    pub position: (f64, f64),
    pub last_seen_ms: i64,
    pub active_incident: Option<IncidentId>,
}

/// A timer that `tick` fires.
enum Timer {
    OfferExpired,
    /// An accepted incident's caregiver is late: flag it and alert.
    ArrivalOverdue,
    /// Still late: alert again.
    ArrivalRealert,
    /// Late past `arrival_escalate_ms`: escalate.
    ArrivalEscalate,
    /// On scene past `on_scene_alert_ms` (or since the last alert): alert.
    OnSceneOverdue,
    /// A pending incident (e.g. read back after a restart) still needs a caregiver.
    Dispatch,
    /// An escalated incident waited too long: hand it off to emergency services.
    Handoff,
}

enum KeyState {
    Pending,
    Done(IncidentId),
    Abandoned,
    /// Let go by an alarm that paused (its run ended first): whoever waited
    /// on it looks the key up again.
    Released,
}

type IncidentCell = Arc<Mutex<Option<Incident>>>;

/// The dispatcher's concurrent maps, hashed with foldhash (randomly seeded
/// per map, several times faster than SipHash on short ids and keys).
type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

/// Alarms staged in one run, most per journal append.
const MAX_RUN: usize = 1024;

/// An incident a run stages (opened, or an open one a repeat merges into),
/// locked until the run's events are durable, with its place in a lane
/// (none for a merge into an open incident).
struct HeldIncident {
    guard: ArcMutexGuard<RawMutex, Option<Incident>>,
    next: Incident,
    lane: Option<InLane>,
}

/// An idempotency key taken by an alarm: locked until its outcome is durable,
/// so that a retry waits for it.
struct KeyHold {
    cell: Arc<Mutex<KeyState>>,
    guard: ArcMutexGuard<RawMutex, KeyState>,
}

/// One alarm taken in whose events wait for the run's journal append.
struct Staged {
    slot: usize,
    key: IdempotencyKey,
    held: KeyHold,
    /// Its incident, in `Run::incidents`.
    place: usize,
    merged: bool,
}

/// Alarms staged for one journal append, the incidents they open or merge
/// into, and their events in order.
#[derive(Default)]
struct Run {
    staged: Vec<Staged>,
    incidents: Vec<HeldIncident>,
    /// Where each of `incidents` is, by id: further repeats of a source in
    /// one run merge into the incident the run already holds.
    places: HashMap<IncidentId, usize, foldhash::fast::RandomState>,
    events: Vec<IncidentEvent>,
    /// The new incidents staged, by source: filed in `by_source` once
    /// durable (until then a repeat finds them here).
    opened: HashMap<SourceKey, IncidentId, foldhash::fast::RandomState>,
    /// Whether the run, while it holds nothing, may wait for a lock another
    /// run holds, for room in a lane or for a read from the journal.
    may_wait: bool,
}

impl Run {
    /// A run for up to `alarms` alarms (most take two or three events).
    fn for_alarms(alarms: usize, may_wait: bool) -> Self {
        let n = alarms.min(MAX_RUN);
        Run {
            may_wait,
            staged: Vec::with_capacity(n),
            incidents: Vec::with_capacity(n),
            places: HashMap::with_capacity_and_hasher(n, Default::default()),
            events: Vec::with_capacity(n * 2),
            opened: HashMap::with_capacity_and_hasher(n, Default::default()),
        }
    }

    /// Whether the run may wait now (for a lock another run holds, or for
    /// room in a lane): only while it holds nothing, and only if its caller
    /// may block.
    fn can_wait(&self) -> bool {
        self.may_wait && self.staged.is_empty()
    }

    /// Holds `incident` until the run is durable; its place.
    fn hold(&mut self, incident: HeldIncident) -> usize {
        let place = self.incidents.len();
        self.places.insert(incident.next.id, place);
        self.incidents.push(incident);
        place
    }
}

/// A batch of alarms being taken in, run by run: see
/// [`Dispatcher::next_run`]. Each run is one journal append. Alarms are taken
/// in by severity (critical, then urgent, then routine; in arrival order
/// within a severity) and answered in the caller's order.
pub struct Intake {
    /// The batch in the caller's order; an alarm is taken out as it is taken in.
    alarms: Vec<Option<Alarm>>,
    /// Places in `alarms`, in the order they are taken in.
    order: std::vec::IntoIter<usize>,
    /// An alarm that met a lock or lane its run holds: taken in again, first,
    /// by the next run. It holds nothing meanwhile.
    paused: Option<(usize, Alarm)>,
    out: Vec<Option<Result<RaiseOutcome>>>,
}

impl Intake {
    /// Whether every alarm is answered (no run is left to stage).
    pub fn is_done(&self) -> bool {
        self.paused.is_none() && self.order.len() == 0
    }

    /// Alarms not yet taken in.
    fn remaining(&self) -> usize {
        self.order.len() + usize::from(self.paused.is_some())
    }

    /// The next alarm to take in (the paused one first) and its place in the batch.
    fn next_alarm(&mut self) -> Option<(usize, Alarm)> {
        if let Some(paused) = self.paused.take() {
            return Some(paused);
        }
        let alarms = &mut self.alarms;
        self.order.by_ref().find_map(|i| Some((i, alarms[i].take()?)))
    }

    /// The answers, in the order of the alarms, once `next_run` has returned
    /// `None`.
    pub fn into_answers(self) -> Vec<Result<RaiseOutcome>> {
        debug_assert!(self.paused.is_none(), "answers taken with an alarm still paused");
        self.out
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| Err(DispatchError::Abandoned(format!("alarm {i} of the batch")))))
            .collect()
    }
}

/// The alarms of one run, staged and holding their keys, incidents, claims
/// and lane places until their events are durable: hand it to
/// [`Dispatcher::journal_run`], then the [`JournaledRun`] it gives back to
/// [`Dispatcher::finish_run`]. Dropping a run unfinished abandons its alarms
/// (their keys answer "abandoned" to retries) but keeps their claims: always
/// finish a run.
pub struct PendingRun(Run);

impl PendingRun {
    /// Alarms staged in the run.
    pub fn len(&self) -> usize {
        self.0.staged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.staged.is_empty()
    }
}

/// A run with the journal's outcome (only the journal's answer makes one),
/// for [`Dispatcher::finish_run`].
pub struct JournaledRun {
    staged: Vec<Staged>,
    incidents: Vec<HeldIncident>,
    opened: HashMap<SourceKey, IncidentId, foldhash::fast::RandomState>,
    events: Arc<Vec<IncidentEvent>>,
    outcome: std::result::Result<(), String>,
}

impl JournaledRun {
    fn of(run: Run, events: Arc<Vec<IncidentEvent>>, outcome: std::result::Result<(), String>) -> Self {
        JournaledRun { staged: run.staged, incidents: run.incidents, opened: run.opened, events, outcome }
    }

    /// Whether the run's events are durable.
    pub fn is_durable(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Hands a journaled run to its continuation exactly once: with the
/// journal's answer, or, if the journal drops it unanswered, with an error.
struct Completion {
    run: Option<(Run, Arc<Vec<IncidentEvent>>)>,
    done: Option<Box<dyn FnOnce(JournaledRun) + Send>>,
}

impl Completion {
    fn call(&mut self, outcome: std::result::Result<(), String>) {
        if let (Some((run, events)), Some(done)) = (self.run.take(), self.done.take()) {
            done(JournaledRun::of(run, events, outcome));
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.call(Err("the journal dropped the append unanswered".into()));
    }
}

/// A lock the run holds was met (or, for a run that may not wait, any lock
/// held elsewhere): the run ends first.
struct Paused;

/// What [`Dispatcher::try_next_run`] answers instead of waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WouldWait;

/// What `stage_open` did with an alarm.
enum Open {
    /// Its incident's place in the run.
    Staged(usize),
    /// The lane is full and the run holds places in it: the run ends first.
    LaneFull(Alarm),
}

/// What taking one alarm in came to. (Moved once per alarm: boxing the
/// large variant would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
enum Step {
    Answered(Result<RaiseOutcome>),
    Staged,
    /// It would wait on something its run holds (a retried key of one of
    /// its alarms, a lane the run fills): the run ends first.
    Pause(Alarm),
}

/// Resolution of the incident timers, and their wheel's size (a revolution of 6.8 minutes;
/// later deadlines wait out extra rounds).
const TIMER_TICK_MS: i64 = 100;
const TIMER_SLOTS: usize = 4096;
/// Deferred incidents dispatched per tick at most.
const DRAIN_PER_TICK: usize = 1000;
/// Candidates a critical alarm's first search asks for: two are offered,
/// the others replace a claim lost to another incident between the search
/// and the claim.
const CRITICAL_CANDIDATES: usize = 4;

/// Claims a caregiver found by a search for incident `id`; the status it was
/// taken from (`OnVisit`: a visit pre-empted). (Unit tests make a claim lose
/// its race here, as it does when another incident takes the caregiver
/// between the search and the claim.)
fn claim(c: &Candidate, id: IncidentId, preempt_visit: bool) -> Option<CaregiverStatus> {
    #[cfg(test)]
    tests::lose_race(&c.slot);
    c.slot.try_claim_from(id, preempt_visit)
}

/// Records on `inc` where `cg`, just claimed for it, was taken from: one taken
/// off a scheduled visit goes back to it if released before it accepts.
fn took(inc: &mut Incident, from: CaregiverStatus, cg: &CaregiverId) {
    if from == CaregiverStatus::OnVisit {
        inc.preempted.push(cg.clone());
    }
}

/// After the offer (or reassignment) to `cg`: if that took the caregiver off
/// a scheduled visit, a PREEMPTED event naming the caregiver, for the
/// scheduler and the console.
fn preempted(from: CaregiverStatus, inc: &Incident, now: i64, cg: &CaregiverId, events: &mut Vec<IncidentEvent>) {
    if from == CaregiverStatus::OnVisit {
        let note = format!("scheduled visit pre-empted for {} ({:?} alarm, {:?})", inc.id, inc.kind, inc.severity);
        events.push(event(EventKind::Preempted, inc, now, Some(cg), &note));
    }
}

/// An event's note from the parts that apply (no allocation when none does).
fn notes(first: Option<&str>, second: Option<String>) -> String {
    match (first, second) {
        (Some(a), Some(b)) => format!("{a}; {b}"),
        (Some(a), None) => a.to_string(),
        (None, b) => b.unwrap_or_default(),
    }
}

/// The dispatcher. Share it behind an `Arc`; every method takes `&self`.
pub struct Dispatcher {
    config: DispatchConfig,
    journal: Arc<dyn Journal>,
    sink: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
    next_id: AtomicU64,
    keys: Map<IdempotencyKey, Arc<Mutex<KeyState>>>,
    incidents: Map<IncidentId, IncidentCell>,
    open: Map<IncidentId, ()>,
    /// Open incident per (device or elder, kind), for merging repeats.
    by_source: Map<SourceKey, IncidentId>,
    roster: Map<CaregiverId, SlotRef>,
    /// Caregivers per status (a zero proves nobody has it).
    counts: Arc<StatusCounts>,
    skills: SkillTable,
    index: GridIndex,
    /// Deadlines of open incidents (offer expiry, arrival overdue, pending dispatch).
    timers: TimerWheel<IncidentId>,
    lanes: Arc<Lanes>,
    /// Routine incidents parked under overload, oldest first.
    deferred: SegQueue<IncidentId>,
    /// Closed incidents in closing order, evicted from memory after `retain_closed_ms`.
    closed: Mutex<VecDeque<(i64, IncidentId)>>,
    /// Keys in the order they were taken in, forgotten after `key_window_ms`.
    key_log: Mutex<VecDeque<(i64, IdempotencyKey)>>,
    kpis: Kpis,
}

/// Alarms being taken in, per severity lane, and a condition variable the
/// urgent lane waits on when it is full.
#[derive(Default)]
struct Lanes {
    in_flight: [AtomicUsize; 3],
    deferred: AtomicUsize,
    urgent_room: (Mutex<()>, Condvar),
}

fn lane(s: Severity) -> usize {
    match s {
        Severity::Routine => 0,
        Severity::Urgent => 1,
        Severity::Critical => 2,
    }
}

/// Leaves a lane when dropped (on every return path of intake).
struct InLane {
    lanes: Arc<Lanes>,
    lane: usize,
}

impl InLane {
    fn enter(lanes: &Arc<Lanes>, lane: usize) -> Self {
        lanes.in_flight[lane].fetch_add(1, Ordering::AcqRel);
        InLane { lanes: lanes.clone(), lane }
    }
}

impl Drop for InLane {
    fn drop(&mut self) {
        self.lanes.in_flight[self.lane].fetch_sub(1, Ordering::AcqRel);
        if self.lane == 1 {
            let _guard = self.lanes.urgent_room.0.lock();
            self.lanes.urgent_room.1.notify_one();
        }
    }
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("incidents", &self.incidents.len())
            .field("open", &self.open.len())
            .field("caregivers", &self.roster.len())
            .finish()
    }
}

/// The order a batch is taken in: places of `alarms` by severity, critical
/// first, in arrival order within a severity (a counting sort: one pass to
/// count, one to place).
fn triage_order(alarms: &[Alarm]) -> Vec<usize> {
    let mut count = [0usize; 3];
    for a in alarms {
        count[lane(a.kind.severity())] += 1;
    }
    // Where each lane's places start: critical (lane 2), urgent (1), routine (0).
    let mut next = [count[2] + count[1], count[2], 0];
    let mut order = vec![0; alarms.len()];
    for (i, a) in alarms.iter().enumerate() {
        let l = lane(a.kind.severity());
        order[next[l]] = i;
        next[l] += 1;
    }
    order
}

/// What repeats are merged by: the device (or the elder, without one) and the kind.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Source {
    Device(DeviceId),
    Elder(ElderId),
}

type SourceKey = (Source, AlarmKind);

/// A source key shares the alarm's ids (no copy, no formatting per alarm).
fn source_key(device: Option<&DeviceId>, elder: &ElderId, kind: AlarmKind) -> SourceKey {
    match device {
        Some(d) => (Source::Device(d.clone()), kind),
        None => (Source::Elder(elder.clone()), kind),
    }
}

/// The source key of an incident.
fn source_of(inc: &Incident) -> SourceKey {
    source_key(inc.device.as_ref(), &inc.elder, inc.kind)
}

fn event(kind: EventKind, inc: &Incident, now: i64, caregiver: Option<&CaregiverId>, note: &str) -> IncidentEvent {
    IncidentEvent {
        kind,
        at_ms: now,
        incident: inc.clone(),
        caregiver: caregiver.cloned(),
        alarm_key: None,
        note: note.to_owned(),
    }
}

impl Dispatcher {
    pub fn new(
        config: DispatchConfig,
        journal: Arc<dyn Journal>,
        sink: Arc<dyn EventSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let counts = Arc::<StatusCounts>::default();
        Dispatcher {
            config,
            journal,
            sink,
            clock: clock.clone(),
            next_id: AtomicU64::new(0),
            keys: Map::default(),
            incidents: Map::default(),
            open: Map::default(),
            by_source: Map::default(),
            roster: Map::default(),
            counts: counts.clone(),
            skills: SkillTable::default(),
            index: GridIndex::new(counts),
            timers: TimerWheel::new(TIMER_TICK_MS, TIMER_SLOTS, clock.now_ms()),
            lanes: Arc::default(),
            deferred: SegQueue::new(),
            closed: Mutex::new(VecDeque::new()),
            key_log: Mutex::new(VecDeque::new()),
            kpis: Kpis::default(),
        }
    }

    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    // ---------------------------------------------------------------- roster

    /// Registers a caregiver or updates its profile. A new caregiver starts
    /// off duty at its home point; an existing one keeps its live state.
    pub fn upsert_caregiver(&self, profile: CaregiverProfile) -> bool {
        let mask = self.skills.intern(&profile.skills);
        if let Some(slot) = self.roster.get(&profile.id).map(|s| s.clone()) {
            slot.set_profile(profile, mask);
            self.index.upsert(&slot); // the travel mode may have changed
            return false;
        }
        let slot = Arc::new(CaregiverSlot::new(profile.clone(), mask, self.counts.clone()));
        match self.roster.entry(profile.id.clone()) {
            Entry::Occupied(e) => {
                e.get().set_profile(profile, mask);
                self.index.upsert(e.get());
                false
            }
            Entry::Vacant(v) => {
                v.insert(slot.clone());
                self.index.upsert(&slot);
                true
            }
        }
    }

    fn slot(&self, id: &CaregiverId) -> Result<SlotRef> {
        self.roster.get(id).map(|s| s.clone()).ok_or_else(|| DispatchError::UnknownCaregiver(id.to_string()))
    }

    /// Sets a caregiver's duty status (not `Busy`, which only dispatch sets).
    pub fn set_status(&self, id: &CaregiverId, status: CaregiverStatus, at: Option<GeoPoint>) -> Result<CaregiverView> {
        if status == CaregiverStatus::Busy {
            return Err(DispatchError::invalid("status", "BUSY is set by the dispatcher, not by the caregiver"));
        }
        let slot = self.slot(id)?;
        if let Some(p) = at {
            slot.set_position(&p, self.now_ms());
            self.index.upsert(&slot);
        }
        slot.set_duty(status).map_err(|inc| DispatchError::CaregiverNotFree {
            caregiver: id.to_string(),
            reason: format!("holds incident {inc}; decline or close it first"),
        })?;
        Ok(self.view(&slot))
    }

    /// Applies a position fix.
    pub fn update_location(&self, id: &CaregiverId, at: GeoPoint, at_ms: i64) -> Result<()> {
        let slot = self.slot(id)?;
        slot.set_position(&at, at_ms);
        self.index.upsert(&slot);
        Ok(())
    }

    fn view(&self, slot: &CaregiverSlot) -> CaregiverView {
        CaregiverView {
            profile: slot.profile(),
            status: slot.status(),
            position: slot.position(),
            last_seen_ms: slot.last_seen_ms(),
            active_incident: slot.active_incident(),
        }
    }

    pub fn caregiver(&self, id: &CaregiverId) -> Option<CaregiverView> {
        self.roster.get(id).map(|s| s.clone()).map(|s| self.view(&s))
    }

    /// The `k` free caregivers nearest to `at` by estimated travel time (no claim is made).
    pub fn nearest_available(&self, at: &GeoPoint, k: usize) -> Vec<Candidate> {
        let filter = MatchFilter { max_radius_m: self.config.max_radius_m, ..Default::default() };
        self.index.nearest(at, k, &filter, &self.config.travel)
    }

    pub fn caregiver_count(&self) -> usize {
        self.roster.len()
    }

    // ---------------------------------------------------------------- intake

    /// Takes an alarm in: a retry of a known key returns the original
    /// incident, a repeat of an open incident's source and kind within the
    /// merge window merges into it, anything else opens an incident and
    /// dispatches it. Returns once the result is durable.
    pub fn raise(&self, alarm: Alarm) -> Result<RaiseOutcome> {
        let mut results = self.raise_batch(vec![alarm]);
        results.pop().unwrap_or_else(|| unreachable!("raise_batch answers every alarm"))
    }

    /// Takes a batch in, each alarm as [`raise`](Self::raise) takes it, with
    /// one journal append per run of alarms (group commit from the caller's
    /// side), waiting for each append on this thread. Results come in the
    /// order of `alarms`, each only once durable. Callers that must not wait
    /// drive the same steps themselves: [`intake`](Self::intake),
    /// [`next_run`](Self::next_run), [`journal_run`](Self::journal_run),
    /// [`finish_run`](Self::finish_run).
    pub fn raise_batch(&self, alarms: Vec<Alarm>) -> Vec<Result<RaiseOutcome>> {
        let mut intake = self.intake(alarms);
        while let Some(PendingRun(mut run)) = self.next_run(&mut intake) {
            let events = Arc::new(std::mem::take(&mut run.events));
            let outcome = self.journal.append(&events);
            self.finish_run(&mut intake, JournaledRun::of(run, events, outcome));
        }
        intake.into_answers()
    }

    /// Starts taking a batch in. Critical always goes first: the batch is
    /// taken in by severity (critical, then urgent, then routine), in arrival
    /// order within a severity, so that no urgent alarm waiting for room in
    /// its lane and no routine alarm is matched before a critical one of the
    /// same batch. Answers keep the order of `alarms`.
    pub fn intake(&self, alarms: Vec<Alarm>) -> Intake {
        self.kpis.received.fetch_add(alarms.len() as u64, Ordering::Relaxed);
        let out = alarms.iter().map(|_| None).collect();
        let order = triage_order(&alarms).into_iter();
        // In place: an `Option<Alarm>` is the size of an `Alarm`.
        let alarms = alarms.into_iter().map(Some).collect();
        Intake { alarms, order, paused: None, out }
    }

    /// Stages the next run of `intake`: alarms are taken in until the run
    /// reaches `MAX_RUN`, or before one that would wait on something the run
    /// holds. Alarms answered at once (a retry of a durable key, a refusal)
    /// are answered in `intake`; the others when their run is finished, each
    /// with its incident as the run left it (a repeat merged later in the
    /// same run counts). `None` once every alarm is answered.
    ///
    /// May block: on a key or incident another run holds (never while this
    /// run holds anything) and, for urgent alarms, on room in their lane.
    pub fn next_run(&self, intake: &mut Intake) -> Option<PendingRun> {
        match self.stage_run(intake, true) {
            Ok(run) => run,
            Err(WouldWait) => unreachable!("a run that may wait never gives up"),
        }
    }

    /// [`next_run`](Self::next_run) without ever waiting, for callers that
    /// must not block (an async runtime's worker): `WouldWait` when the next
    /// alarm would wait on a key or incident another run holds, on room in
    /// the urgent lane, or on a read from the journal. The alarm stays first
    /// in `intake`; hand it to `next_run` on a thread that may wait.
    pub fn try_next_run(&self, intake: &mut Intake) -> std::result::Result<Option<PendingRun>, WouldWait> {
        self.stage_run(intake, false)
    }

    fn stage_run(&self, intake: &mut Intake, may_wait: bool) -> std::result::Result<Option<PendingRun>, WouldWait> {
        let mut run = Run::for_alarms(intake.remaining(), may_wait);
        while run.staged.len() < MAX_RUN {
            let Some((slot, alarm)) = intake.next_alarm() else { break };
            match self.take_in(slot, alarm, &mut run) {
                Step::Answered(answer) => intake.out[slot] = Some(answer),
                Step::Staged => {}
                Step::Pause(alarm) => {
                    intake.paused = Some((slot, alarm));
                    if run.staged.is_empty() {
                        debug_assert!(!may_wait, "only a run holding something, or one that may not wait, pauses");
                        return Err(WouldWait);
                    }
                    break;
                }
            }
        }
        Ok((!run.staged.is_empty()).then_some(PendingRun(run)))
    }

    /// Hands the run's events to the journal. `done` gets the run back with
    /// the journal's outcome, for [`finish_run`](Self::finish_run), on
    /// whatever thread the journal answers on (possibly this one, before
    /// returning): keep it short, hand the run on.
    pub fn journal_run(&self, run: PendingRun, done: impl FnOnce(JournaledRun) + Send + 'static) {
        let PendingRun(mut run) = run;
        let events = Arc::new(std::mem::take(&mut run.events));
        let mut completion = Completion { run: Some((run, events.clone())), done: Some(Box::new(done)) };
        self.journal.append_then(&events, Box::new(move |outcome| completion.call(outcome)));
    }

    /// Completes a journaled run: makes its incidents visible, publishes and
    /// answers in `intake`; or, if the journal failed, undoes it (claims
    /// released, new incidents dropped, keys forgotten so a retry starts
    /// afresh). The run's locks are held until its events are published.
    /// Never blocks on anything a run holds.
    pub fn finish_run(&self, intake: &mut Intake, run: JournaledRun) {
        let JournaledRun { staged, incidents, opened, events, outcome } = run;
        let out = &mut intake.out;
        match outcome {
            Ok(()) => {
                let now = self.now_ms();
                let mut keys = Vec::with_capacity(staged.len());
                let mut held_keys = Vec::with_capacity(staged.len());
                let mut merged = 0;
                for Staged { slot, key, mut held, place, merged: repeat } in staged {
                    let incident = incidents[place].next.clone();
                    *held.guard = KeyState::Done(incident.id);
                    keys.push((now, key));
                    held_keys.push(held);
                    merged += u64::from(repeat);
                    out[slot] = Some(Ok(RaiseOutcome { incident, duplicate: false, merged: repeat }));
                }
                self.kpis.merged.fetch_add(merged, Ordering::Relaxed);
                let mut timers = Vec::with_capacity(incidents.len());
                let mut first_offers = Vec::with_capacity(incidents.len());
                let mut locked = Vec::with_capacity(incidents.len());
                for HeldIncident { mut guard, next: inc, lane } in incidents {
                    if lane.is_some() {
                        if inc.state == IncidentState::Deferred {
                            self.deferred.push(inc.id);
                        }
                        first_offers.extend(self.kpis.observe_new(&inc));
                        self.open.insert(inc.id, ());
                        if let Some(d) = self.deadline(&inc) {
                            timers.push((d, inc.id));
                        }
                    }
                    *guard = Some(inc);
                    locked.push((guard, lane));
                }
                // Recorded and scheduled together: one lock of the histogram and
                // of each timer bucket per run, not per alarm.
                self.kpis.record_first_offers(&first_offers);
                self.kpis.count_escalations(&events);
                self.timers.schedule_all(timers);
                self.key_log.lock().extend(keys);
                for (source, id) in opened {
                    self.by_source.insert(source, id);
                }
                // Keys and incidents stay locked until their events are published.
                self.sink.publish(&events);
                drop((held_keys, locked));
            }
            Err(e) => {
                let now = self.now_ms();
                for mut h in incidents.into_iter().filter(|h| h.lane.is_some()) {
                    self.release_holder(&mut h.next, now, &mut Vec::new(), "not stored");
                    self.incidents.remove(&h.next.id);
                    if h.next.state == IncidentState::Deferred {
                        self.lanes.deferred.fetch_sub(1, Ordering::AcqRel);
                    }
                }
                for s in staged {
                    self.let_go(&s.key, s.held, KeyState::Abandoned);
                    out[s.slot] = Some(Err(DispatchError::Journal(e.clone())));
                }
            }
        }
    }

    /// Pauses an alarm that took its key: the key is let go (a retry waiting
    /// on it looks again), so that a paused alarm holds nothing.
    fn pause_holding(&self, alarm: Alarm, held: KeyHold) -> Step {
        self.let_go(&alarm.key, held, KeyState::Released);
        Step::Pause(alarm)
    }

    /// Lets go of a key whose alarm was not taken in, leaving `state` to a
    /// retry waiting on it (`Abandoned`: it hears so; `Released`: it looks
    /// again); later ones start afresh.
    fn let_go(&self, key: &IdempotencyKey, mut held: KeyHold, state: KeyState) {
        *held.guard = state;
        self.keys.remove_if(key, |_, v| Arc::ptr_eq(v, &held.cell));
    }

    /// Takes one alarm into `run`, answers it at once (a retry of a durable
    /// key, a refusal), or pauses it until the run is durable (holding
    /// nothing meanwhile).
    fn take_in(&self, slot: usize, alarm: Alarm, run: &mut Run) -> Step {
        let source = source_key(alarm.device.as_ref(), &alarm.elder, alarm.kind);
        let held = loop {
            let cell = Arc::new(Mutex::new(KeyState::Pending));
            let guard = cell.lock_arc();
            let existing = match self.keys.entry(alarm.key.clone()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(v) => {
                    v.insert(cell.clone());
                    break KeyHold { cell, guard };
                }
            };
            drop(guard);
            // The creator holds the key until its outcome is durable.
            let Some(state) = self.lock_or_pause(run, || existing.try_lock(), || existing.lock()) else {
                return Step::Pause(alarm);
            };
            let id = match &*state {
                KeyState::Done(id) => *id,
                KeyState::Released => continue,
                KeyState::Pending | KeyState::Abandoned => {
                    self.kpis.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Step::Answered(Err(DispatchError::Abandoned(alarm.key.to_string())));
                }
            };
            drop(state);
            // The incident may be held by a run too (this one, merging a repeat).
            let Ok(found) = self.incident_or_pause(id, run) else { return Step::Pause(alarm) };
            self.kpis.duplicates.fetch_add(1, Ordering::Relaxed);
            return Step::Answered(
                found
                    .map(|incident| RaiseOutcome { incident, duplicate: true, merged: false })
                    .ok_or_else(|| DispatchError::UnknownIncident(id.to_string())),
            );
        };
        let key = alarm.key.clone();
        let merge = match self.stage_merge(&alarm, &source, run) {
            Ok(merge) => merge,
            Err(Paused) => return self.pause_holding(alarm, held),
        };
        let staged = match merge {
            Some(place) => Ok((place, true)),
            None => match self.stage_open(alarm, source, run) {
                Ok(Open::Staged(place)) => Ok((place, false)),
                Ok(Open::LaneFull(alarm)) => return self.pause_holding(alarm, held),
                Err(e) => Err(e),
            },
        };
        match staged {
            Ok((place, merged)) => {
                run.staged.push(Staged { slot, key, held, place, merged });
                Step::Staged
            }
            Err(e) => {
                self.let_go(&key, held, KeyState::Abandoned);
                Step::Answered(Err(e))
            }
        }
    }

    /// Merges a repeat into its open incident, if there is one within the
    /// window: one this run already holds (opened by an earlier alarm of the
    /// run, or merged into), or one it locks now. Its place in the run.
    fn stage_merge(
        &self,
        alarm: &Alarm,
        source: &SourceKey,
        run: &mut Run,
    ) -> std::result::Result<Option<usize>, Paused> {
        let id = match run.opened.get(source) {
            Some(id) => *id,
            None => match self.by_source.get(source).map(|id| *id) {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        let now = self.now_ms();
        if let Some(&place) = run.places.get(&id) {
            let next = &mut run.incidents[place].next;
            return Ok(self.merge_repeat(next, alarm, now, &mut run.events).then_some(place));
        }
        let Some(cell) = self.cell(id) else { return Ok(None) };
        let guard = self.lock_or_pause(run, || cell.try_lock_arc(), || cell.lock_arc()).ok_or(Paused)?;
        let Some(mut next) = guard.clone() else { return Ok(None) };
        if !self.merge_repeat(&mut next, alarm, now, &mut run.events) {
            return Ok(None);
        }
        Ok(Some(run.hold(HeldIncident { guard, next, lane: None })))
    }

    /// Merges a repeat into `inc` with its event, if `inc` is open and its
    /// last alarm within the merge window.
    fn merge_repeat(&self, inc: &mut Incident, alarm: &Alarm, now: i64, events: &mut Vec<IncidentEvent>) -> bool {
        if !inc.state.is_open() || now - inc.last_alarm_ms > self.config.merge_window_ms {
            return false;
        }
        inc.repeat_count += 1;
        inc.last_alarm_ms = now;
        inc.updated_ms = now;
        let mut ev = event(EventKind::Merged, inc, now, inc.assigned.as_ref(), &alarm.detail);
        ev.alarm_key = Some(alarm.key.clone());
        events.push(ev);
        true
    }

    /// Takes a new alarm into its severity lane — critical always, urgent when
    /// its lane has room (waiting for it), routine when its lane has room, or
    /// else parked as DEFERRED, or refused when the deferred backlog is full —
    /// and stages its incident, dispatched unless deferred; or gives the
    /// alarm back when the lane is full and the run holds places in it (the
    /// run ends first).
    fn stage_open(&self, alarm: Alarm, source: SourceKey, run: &mut Run) -> Result<Open> {
        let severity = alarm.kind.severity();
        let l = lane(severity);
        let lanes = &self.lanes;
        let limit = match severity {
            Severity::Critical => usize::MAX,
            Severity::Urgent => self.config.urgent_lane,
            Severity::Routine => self.config.routine_lane,
        };
        let full = || lanes.in_flight[l].load(Ordering::Acquire) >= limit;
        if !run.staged.is_empty() && full() {
            // The run's own alarms may hold places in the lane: it ends before the lane is judged full.
            return Ok(Open::LaneFull(alarm));
        }
        let deferred_reason = match severity {
            Severity::Critical => None,
            Severity::Urgent => {
                // The lane's lock only for a lane that looks full: it is one
                // lock for every urgent alarm, and the place is taken after it
                // is let go either way.
                if full() {
                    let mut guard = lanes.urgent_room.0.lock();
                    while full() {
                        if !run.can_wait() {
                            return Ok(Open::LaneFull(alarm));
                        }
                        lanes.urgent_room.1.wait_for(&mut guard, std::time::Duration::from_millis(50));
                    }
                }
                None
            }
            Severity::Routine => {
                let busy = lanes.in_flight[l].load(Ordering::Acquire);
                (busy >= limit).then(|| format!("routine lane full ({busy} alarms being taken in)"))
            }
        };
        if deferred_reason.is_some() && lanes.deferred.fetch_add(1, Ordering::AcqRel) >= self.config.max_deferred {
            lanes.deferred.fetch_sub(1, Ordering::AcqRel);
            return Err(DispatchError::Overloaded(format!(
                "routine lane full and {} routine alarms already deferred",
                self.config.max_deferred
            )));
        }
        let in_lane = InLane::enter(lanes, l);
        let now = self.now_ms();
        let id = IncidentId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let cell: IncidentCell = Arc::new(Mutex::new(None));
        let guard = cell.lock_arc();
        self.incidents.insert(id, cell);
        let key = alarm.key.clone();
        let mut inc = Incident::open(id, alarm, now);
        let mut created = event(EventKind::Created, &inc, now, None, "");
        created.alarm_key = Some(key);
        run.events.push(created);
        match deferred_reason {
            Some(reason) => {
                inc.set_state(IncidentState::Deferred);
                inc.deferred_reason = Some(reason.clone());
                run.events.push(event(EventKind::Deferred, &inc, now, None, &reason));
            }
            None => self.dispatch(&mut inc, now, &mut run.events),
        }
        run.opened.insert(source, id);
        Ok(Open::Staged(run.hold(HeldIncident { guard, next: inc, lane: Some(in_lane) })))
    }

    /// The cell of an incident held in memory (the map's shard lock is let go
    /// before the caller locks the cell).
    fn cell(&self, id: IncidentId) -> Option<IncidentCell> {
        self.incidents.get(&id).map(|c| c.clone())
    }

    /// [`incident`](Self::incident) for intake: `Paused` instead of waiting
    /// on an incident while the run holds anything.
    fn incident_or_pause(&self, id: IncidentId, run: &Run) -> std::result::Result<Option<Incident>, Paused> {
        match self.cell(id) {
            Some(cell) => {
                Ok(self.lock_or_pause(run, || cell.try_lock_arc(), || cell.lock_arc()).ok_or(Paused)?.clone())
            }
            None if run.may_wait => Ok(self.journal.load(id)),
            None => Err(Paused),
        }
    }

    /// Takes a lock a run may be holding (a key or an incident it staged):
    /// at once if it is free; else waits for it only if the run holds
    /// nothing (so a thread never waits while holding a staged lock) and may
    /// wait, or returns `None` so that the run ends first.
    fn lock_or_pause<G>(&self, run: &Run, try_lock: impl FnOnce() -> Option<G>, lock: impl FnOnce() -> G) -> Option<G> {
        try_lock().or_else(|| run.can_wait().then(lock))
    }

    // -------------------------------------------------------------- matching

    /// Offers `inc` to the nearest free caregiver, or escalates it. Appends
    /// the events; the caller journals them.
    fn dispatch(&self, inc: &mut Incident, now: i64, events: &mut Vec<IncidentEvent>) {
        debug_assert!(inc.assigned.is_none(), "{} dispatched while held", inc.id);
        if inc.dispatch_attempts >= self.config.max_offers {
            let note = format!("{} offers declined or expired", inc.dispatch_attempts);
            self.escalate_in(inc, EscalationReason::AllDeclined, &note, now, events);
            return;
        }
        let critical = inc.severity == Severity::Critical;
        let declined = inc.declined_by.clone();
        let needs = inc.required_skill.clone();
        let skill = needs.as_deref().and_then(|name| Some((self.skills.require(name)?, name)));
        // The ladder's first rung: the usual radius, then the wide one.
        let radii = [self.config.max_radius_m, self.config.wide_radius_m.max(self.config.max_radius_m)];
        // Nobody free anywhere (a storm): no search can find anyone.
        let anyone = self.counts.get(CaregiverStatus::Available) > 0
            || (critical && self.counts.get(CaregiverStatus::OnVisit) > 0);
        for (rung, radius) in radii.into_iter().enumerate().filter(|_| anyone) {
            if rung == 1 && radius <= radii[0] {
                break;
            }
            let filter =
                MatchFilter { skill: None, exclude: &declined, allow_on_visit: critical, max_radius_m: radius };
            // Claims can lose races with other incidents: the first look asks only
            // for one (the smallest search) or, for a critical alarm, for a few,
            // so that a lost claim of either of its two offers has a replacement;
            // later looks ask for `candidates`.
            for attempt in 0..3 {
                let k = match (attempt, critical) {
                    (0, false) => 1,
                    (0, true) => CRITICAL_CANDIDATES,
                    _ => self.config.candidates,
                };
                let candidates = self.ranked(&inc.location, k, &filter, skill);
                if candidates.is_empty() {
                    break;
                }
                let id = inc.id;
                // Lazy: candidates are claimed best first until the offers are made.
                let mut claimed = candidates.iter().filter_map(|c| Some((c, claim(c, id, critical)?)));
                let Some((first, from)) = claimed.next() else { continue };
                let widened = (rung == 1).then(|| {
                    format!(
                        "nobody free within {:.0} km; search widened to {:.0} km",
                        radii[0] / 1000.0,
                        radius / 1000.0
                    )
                });
                let note = notes(widened.as_deref(), self.skill_note(needs.as_deref(), skill, first));
                self.offer_to(inc, &first.slot.id, first.eta_s, now);
                took(inc, from, &first.slot.id);
                events.push(event(EventKind::Offered, inc, now, Some(&first.slot.id), &note));
                preempted(from, inc, now, &first.slot.id, events);
                if !critical {
                    return;
                }
                // Critical: the next that can be claimed is offered too, and the
                // first to accept takes it. If every other candidate of a full
                // search was lost to other incidents, one more search finds it
                // (a search short of `k` has already seen everyone eligible).
                let more;
                let second = match claimed.next() {
                    None if candidates.len() >= k => {
                        more = self.ranked(&inc.location, self.config.candidates, &filter, skill);
                        let others = more.iter().filter(|c| !Arc::ptr_eq(&c.slot, &first.slot));
                        others.filter_map(|c| Some((c, claim(c, id, true)?))).next()
                    }
                    claimed => claimed,
                };
                if let Some((second, from)) = second {
                    inc.co_offer = Some((second.slot.id.clone(), second.eta_s));
                    took(inc, from, &second.slot.id);
                    let both = "critical alarm: offered to two at once, the first to accept takes it";
                    let note = notes(Some(both), self.skill_note(needs.as_deref(), skill, second));
                    events.push(event(EventKind::Offered, inc, now, Some(&second.slot.id), &note));
                    preempted(from, inc, now, &second.slot.id, events);
                }
                return;
            }
        }
        let (reason, note) = if inc.declined_by.is_empty() {
            (EscalationReason::NoCaregiverAvailable, format!("no free caregiver within {:.0} km", radii[1] / 1000.0))
        } else {
            (EscalationReason::AllDeclined, format!("no free caregiver left after {} declined", inc.declined_by.len()))
        };
        self.escalate_in(inc, reason, &note, now, events);
    }

    /// The free caregivers nearest `at` by travel time, at most `k`, best
    /// first. For an elder whose care needs `skill`, the `k` nearest who hold
    /// it join them, and a holder ranks `skill_slack_s` ahead of its ETA.
    fn ranked(&self, at: &GeoPoint, k: usize, filter: &MatchFilter, skill: Option<(u64, &str)>) -> Vec<Candidate> {
        let travel = &self.config.travel;
        let mut found = self.index.nearest(at, k, filter, travel);
        let Some(skill) = skill else { return found };
        let holders = self.index.nearest(at, k, &MatchFilter { skill: Some(skill), ..filter.clone() }, travel);
        for c in holders {
            if !found.iter().any(|f| Arc::ptr_eq(&f.slot, &c.slot)) {
                found.push(c);
            }
        }
        let slack = self.config.skill_slack_s;
        let rank = |c: &Candidate| if c.slot.holds(skill) { c.eta_s - slack } else { c.eta_s };
        // Stable: equal ranks stay nearest first.
        found.sort_by(|a, b| rank(a).total_cmp(&rank(b)));
        found
    }

    /// What the console should know of an offer to `c` for an elder whose
    /// care needs the skill `needs` (`skill` is its mask and name, if any
    /// caregiver was ever registered with it).
    fn skill_note(&self, needs: Option<&str>, skill: Option<(u64, &str)>, c: &Candidate) -> Option<String> {
        let name = needs?;
        Some(match skill {
            Some(s) if c.slot.holds(s) => format!("holds the elder's required skill {name}"),
            Some(_) => format!(
                "nobody free with the elder's required skill {name} could arrive within {:.0} s of this caregiver",
                self.config.skill_slack_s
            ),
            None => format!("no caregiver is registered with the elder's required skill {name}"),
        })
    }

    /// Records an offer to `cg`, whom the caller has just claimed.
    fn offer_to(&self, inc: &mut Incident, cg: &CaregiverId, eta_s: f64, now: i64) {
        inc.set_state(IncidentState::Offered);
        inc.assigned = Some(cg.clone());
        inc.assigned_eta_s = eta_s;
        inc.dispatch_attempts += 1;
        inc.first_offered_ms.get_or_insert(now);
        inc.offered_ms = Some(now);
        inc.offer_deadline_ms = Some(now + self.config.offer_timeout_ms);
        // Lateness is the new holder's own.
        inc.arrival_overdue = false;
        inc.last_alert_ms = None;
        inc.updated_ms = now;
    }

    /// Escalates `inc` into the district supervisor queue, with the
    /// emergency hand-off timer of its severity. Escalated by the ladder
    /// (nobody could be claimed, all declined, arrival overdue) it takes the
    /// ladder's second rung, once per incident: the elder's family contact and
    /// the supervisor queue are notified, recorded in `family_notified_ms` and
    /// a FAMILY_NOTIFIED event (the console shows the contacts; the KPIs count
    /// it as a FamilyContact escalation) after the ESCALATED one, so the
    /// incident keeps the reason it was escalated for. A dispatcher escalating
    /// to the family contact by hand is recorded in `family_notified_ms` too.
    fn escalate_in(
        &self,
        inc: &mut Incident,
        reason: EscalationReason,
        note: &str,
        now: i64,
        events: &mut Vec<IncidentEvent>,
    ) {
        use EscalationReason::*;
        let released = self.release_holder(inc, now, events, "escalated");
        inc.set_state(IncidentState::Escalated);
        inc.escalation = Some(reason);
        let notified_before = inc.family_notified_ms.is_some();
        let rung = matches!(reason, NoCaregiverAvailable | AllDeclined | ArrivalOverdue) && !notified_before;
        inc.escalation_note = if rung || reason == FamilyContact {
            format!("{note}; in the district supervisor queue, family contact notified")
        } else if notified_before {
            format!("{note}; in the district supervisor queue, family contact notified earlier")
        } else {
            format!("{note}; in the district supervisor queue")
        };
        if reason == FamilyContact {
            inc.family_notified_ms.get_or_insert(now);
        }
        inc.escalated_ms = Some(now);
        inc.offer_deadline_ms = None;
        inc.updated_ms = now;
        events.push(event(EventKind::Escalated, inc, now, released.as_ref(), &inc.escalation_note));
        if rung {
            inc.family_notified_ms = Some(now);
            let note = "escalation ladder: the elder's family contact and the district supervisor queue notified";
            events.push(event(EventKind::FamilyNotified, inc, now, None, note));
        }
    }

    /// The ladder's last rung: an emergency-services hand-off record.
    fn hand_off(&self, inc: &mut Incident, now: i64, events: &mut Vec<IncidentEvent>) {
        let service = match inc.kind {
            AlarmKind::Smoke | AlarmKind::Gas => "119 (fire)",
            _ => "120 (medical)",
        };
        let waited = (now - inc.escalated_ms.unwrap_or(now)) / 1000;
        inc.escalation = Some(EscalationReason::EmergencyServices);
        inc.escalation_note = format!(
            "hand-off to {service}: {:?} alarm for elder {} at {:.5},{:.5}; escalated {waited} s ago and not taken on",
            inc.kind,
            inc.elder,
            inc.location.lat(),
            inc.location.lon()
        );
        inc.updated_ms = now;
        events.push(event(EventKind::Escalated, inc, now, None, &inc.escalation_note.clone()));
    }

    /// Frees every caregiver holding an offer of `inc` or `inc` itself; a
    /// second offer that is withdrawn gets its own event (for that caregiver's
    /// app). Returns the main holder.
    fn release_holder(
        &self,
        inc: &mut Incident,
        now: i64,
        events: &mut Vec<IncidentEvent>,
        why: &str,
    ) -> Option<CaregiverId> {
        if let Some((co, _)) = inc.co_offer.take() {
            self.free(inc, &co);
            events.push(event(EventKind::OfferWithdrawn, inc, now, Some(&co), why));
        }
        let cg = inc.assigned.take()?;
        self.free(inc, &cg);
        inc.offer_deadline_ms = None;
        Some(cg)
    }

    /// Releases `cg` from `inc` (back to its visit if it was taken off one
    /// and never accepted).
    fn free(&self, inc: &mut Incident, cg: &CaregiverId) {
        self.release(inc, cg);
        inc.preempted.retain(|c| c != cg);
    }

    /// Releases `cg` from `inc` as `inc` says: back to the visit if `inc`
    /// took it off one (`preempted`), else available.
    fn release(&self, inc: &Incident, cg: &CaregiverId) -> bool {
        let Some(slot) = self.roster.get(cg).map(|s| s.clone()) else { return false };
        let freed = slot.release(inc.id, inc.preempted.contains(cg));
        debug_assert!(freed, "{cg} did not hold {}", inc.id);
        freed
    }

    // ------------------------------------------------------------ life cycle

    /// Runs `f` on a copy of the incident under its lock, then journals and
    /// publishes the events it produced. `f` fails only before it claims or
    /// releases a caregiver; if the journal fails, `undo_claims` puts the
    /// caregivers back and the incident is unchanged.
    fn update(
        &self,
        id: IncidentId,
        f: impl FnOnce(&mut Incident, i64, &mut Vec<IncidentEvent>) -> Result<()>,
    ) -> Result<Incident> {
        let cell = self.cell(id).ok_or_else(|| DispatchError::UnknownIncident(id.to_string()))?;
        let mut guard = cell.lock();
        let current = guard.as_ref().ok_or_else(|| DispatchError::UnknownIncident(id.to_string()))?;
        let mut next = current.clone();
        let now = self.now_ms();
        let mut events = Vec::new();
        f(&mut next, now, &mut events)?;
        if events.is_empty() {
            return Ok(next);
        }
        if let Err(e) = self.journal.append(&events) {
            self.undo_claims(current, &next);
            return Err(DispatchError::Journal(e));
        }
        // Every change of deadline schedules it; entries of older deadlines are dropped when they fire.
        let deadline = self.deadline(&next);
        if deadline.is_some() && deadline != self.deadline(current) {
            self.timers.schedule(deadline.unwrap_or_default(), id);
        }
        self.kpis.observe(Some(current), &next);
        self.kpis.count_escalations(&events);
        if next.state.is_terminal() {
            self.closed.lock().push_back((now, id));
            self.open.remove(&id);
            self.by_source.remove_if(&source_of(&next), |_, v| *v == id);
        }
        *guard = Some(next.clone());
        self.sink.publish(&events);
        Ok(next)
    }

    /// After a failed journal write: give back a caregiver claimed by the
    /// change and re-take the one it released (`before` still says which of
    /// them a release sends back to a visit).
    fn undo_claims(&self, before: &Incident, after: &Incident) {
        let held = |i: &Incident| -> Vec<CaregiverId> {
            i.assigned.iter().chain(i.co_offer.as_ref().map(|(c, _)| c)).cloned().collect()
        };
        let (was, now) = (held(before), held(after));
        for c in now.iter().filter(|c| !was.contains(c)) {
            self.release(after, c);
        }
        for c in was.iter().filter(|c| !now.contains(c)) {
            if let Some(slot) = self.roster.get(c).map(|s| s.clone()) {
                if slot.active_incident().is_none() {
                    slot.restore_claim(before.id);
                }
            }
        }
    }

    fn check(inc: &Incident, to: IncidentState) -> Result<()> {
        if inc.state.can_transition_to(to) {
            Ok(())
        } else {
            Err(DispatchError::InvalidTransition { incident: inc.id.to_string(), from: inc.state, to })
        }
    }

    fn check_holder(inc: &Incident, cg: &CaregiverId) -> Result<()> {
        if inc.assigned.as_ref() == Some(cg) {
            Ok(())
        } else {
            Err(DispatchError::NotHolder { incident: inc.id.to_string(), caregiver: cg.to_string() })
        }
    }

    /// A caregiver's action: `cg` must hold the incident and it must be in
    /// state `from` (the action would take it to `to`).
    fn expect_held(inc: &Incident, cg: &CaregiverId, from: IncidentState, to: IncidentState) -> Result<()> {
        Self::check_holder(inc, cg)?;
        if inc.state != from {
            return Err(DispatchError::InvalidTransition { incident: inc.id.to_string(), from: inc.state, to });
        }
        Ok(())
    }

    /// The caregiver acknowledges the offer. Of two live offers the first
    /// accept wins and the other is withdrawn.
    pub fn accept(&self, id: IncidentId, cg: &CaregiverId) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            if inc.co_offer.as_ref().is_some_and(|(c, _)| c == cg) && inc.state == IncidentState::Offered {
                let (co, eta) = inc.co_offer.take().unwrap_or_else(|| unreachable!());
                let other = inc.assigned.replace(co);
                inc.assigned_eta_s = eta;
                inc.co_offer = other.map(|o| (o, 0.0));
            }
            Self::expect_held(inc, cg, IncidentState::Offered, IncidentState::Accepted)?;
            if let Some((other, _)) = inc.co_offer.take() {
                self.free(inc, &other);
                events.push(event(
                    EventKind::OfferWithdrawn,
                    inc,
                    now,
                    Some(&other),
                    "another caregiver accepted first",
                ));
            }
            inc.set_state(IncidentState::Accepted);
            // The visit is left behind: released, the caregiver is free.
            inc.preempted.retain(|c| c != cg);
            inc.accepted_ms = Some(now);
            inc.offer_deadline_ms = None;
            inc.updated_ms = now;
            events.push(event(EventKind::Accepted, inc, now, Some(cg), ""));
            Ok(())
        })
    }

    /// The caregiver declines. With a second live offer the other caregiver
    /// keeps it; otherwise the incident goes to the next nearest.
    pub fn decline(&self, id: IncidentId, cg: &CaregiverId, note: &str) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            if inc.state == IncidentState::Offered {
                if let Some((co, eta)) = inc.co_offer.take() {
                    if co == *cg || inc.assigned.as_ref() == Some(cg) {
                        let keep = if co == *cg {
                            inc.assigned.take().map(|a| (a, inc.assigned_eta_s))
                        } else {
                            Some((co, eta))
                        };
                        self.free(inc, cg);
                        if let Some((k, e)) = keep {
                            inc.assigned = Some(k);
                            inc.assigned_eta_s = e;
                        }
                        inc.declined_by.push(cg.clone());
                        inc.updated_ms = now;
                        events.push(event(EventKind::Declined, inc, now, Some(cg), note));
                        return Ok(());
                    }
                    inc.co_offer = Some((co, eta));
                }
            }
            Self::expect_held(inc, cg, IncidentState::Offered, IncidentState::Pending)?;
            self.release_holder(inc, now, events, "declined");
            inc.declined_by.push(cg.clone());
            inc.set_state(IncidentState::Pending);
            inc.updated_ms = now;
            events.push(event(EventKind::Declined, inc, now, Some(cg), note));
            self.dispatch(inc, now, events);
            Ok(())
        })
    }

    /// The caregiver reached the elder.
    pub fn arrive(&self, id: IncidentId, cg: &CaregiverId) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            Self::expect_held(inc, cg, IncidentState::Accepted, IncidentState::OnScene)?;
            inc.set_state(IncidentState::OnScene);
            inc.arrived_ms = Some(now);
            inc.last_alert_ms = None; // on-scene alerts count from arrival
            inc.updated_ms = now;
            events.push(event(EventKind::Arrived, inc, now, Some(cg), ""));
            Ok(())
        })
    }

    /// Closes the incident with an outcome. `by` is the caregiver holding it,
    /// or `None` for a dispatcher.
    pub fn resolve(&self, id: IncidentId, by: Option<&CaregiverId>, outcome: Outcome, note: &str) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            if let Some(cg) = by {
                Self::check_holder(inc, cg)?;
            }
            Self::check(inc, IncidentState::Resolved)?;
            let released = self.release_holder(inc, now, events, "resolved");
            inc.set_state(IncidentState::Resolved);
            inc.outcome = Some(outcome);
            inc.resolution_note = note.to_owned();
            inc.closed_ms = Some(now);
            inc.updated_ms = now;
            events.push(event(EventKind::Resolved, inc, now, released.as_ref(), note));
            Ok(())
        })
    }

    /// A dispatcher escalates by hand.
    pub fn escalate(&self, id: IncidentId, reason: EscalationReason, note: &str) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            Self::check(inc, IncidentState::Escalated)?;
            self.escalate_in(inc, reason, note, now, events);
            Ok(())
        })
    }

    /// A dispatcher hands the incident to a named caregiver (pre-empting a
    /// scheduled visit if needed).
    pub fn reassign(&self, id: IncidentId, to: &CaregiverId, note: &str) -> Result<Incident> {
        let slot = self.slot(to)?;
        self.update(id, |inc, now, events| {
            Self::check(inc, IncidentState::Offered)?;
            if inc.assigned.as_ref() == Some(to) {
                return Err(DispatchError::CaregiverNotFree {
                    caregiver: to.to_string(),
                    reason: format!("already holds {id}"),
                });
            }
            let Some(from) = slot.try_claim_from(id, true) else {
                let reason = match slot.active_incident() {
                    Some(other) => format!("holds incident {other}"),
                    None => format!("is {:?}", slot.status()).to_lowercase(),
                };
                return Err(DispatchError::CaregiverNotFree { caregiver: to.to_string(), reason });
            };
            if let Some(prev) = self.release_holder(inc, now, events, "reassigned by a dispatcher") {
                events.push(event(EventKind::OfferWithdrawn, inc, now, Some(&prev), "reassigned by a dispatcher"));
            }
            let (lat, lon) = slot.position();
            let eta = GeoPoint::new("position", lat, lon)
                .map(|p| self.config.travel.eta_s(p.distance_m(&inc.location), slot.mode()))
                .unwrap_or(0.0);
            self.offer_to(inc, to, eta, now);
            took(inc, from, to);
            events.push(event(EventKind::Reassigned, inc, now, Some(to), note));
            preempted(from, inc, now, to, events);
            Ok(())
        })
    }

    /// The elder or a dispatcher cancels the incident.
    pub fn cancel(&self, id: IncidentId, reason: &str) -> Result<Incident> {
        self.update(id, |inc, now, events| {
            Self::check(inc, IncidentState::Cancelled)?;
            let released = self.release_holder(inc, now, events, "cancelled");
            inc.set_state(IncidentState::Cancelled);
            inc.resolution_note = reason.to_owned();
            inc.closed_ms = Some(now);
            inc.updated_ms = now;
            events.push(event(EventKind::Cancelled, inc, now, released.as_ref(), reason));
            Ok(())
        })
    }

    /// Fires due timers: expired offers go to the next caregiver, overdue
    /// arrivals are alerted, alerted again and at last escalated, long stays
    /// on scene are alerted again and again, pending incidents (e.g. after a
    /// restart) are dispatched, escalated ones handed off. Returns how many
    /// incidents changed.
    pub fn tick(&self) -> usize {
        let now = self.now_ms();
        let mut due = Vec::new();
        self.timers.expire(now, &mut due);
        let mut ids: Vec<IncidentId> = due.into_iter().map(|(_, id)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut changed = 0;
        for id in ids {
            // Peek without copying: most open incidents have nothing due.
            let Some(cell) = self.cell(id) else { continue };
            if cell.lock().as_ref().and_then(|inc| self.timer_due(inc, now)).is_none() {
                continue;
            }
            let mut fired = false;
            let _ = self.update(id, |inc, now, events| {
                // Due again under the lock: an action may have come in between.
                match self.timer_due(inc, now) {
                    Some(Timer::OfferExpired) => {
                        let mut silent: Vec<CaregiverId> = inc.co_offer.take().map(|(c, _)| c).into_iter().collect();
                        silent.extend(inc.assigned.take());
                        for cg in &silent {
                            self.free(inc, cg);
                            inc.declined_by.push(cg.clone());
                        }
                        inc.offer_deadline_ms = None;
                        inc.set_state(IncidentState::Pending);
                        inc.updated_ms = now;
                        for cg in &silent {
                            events.push(event(EventKind::OfferExpired, inc, now, Some(cg), "no answer in time"));
                        }
                        self.dispatch(inc, now, events);
                    }
                    Some(Timer::Handoff) => self.hand_off(inc, now, events),
                    Some(Timer::ArrivalOverdue) => {
                        inc.arrival_overdue = true;
                        self.alert(inc, EventKind::ArrivalOverdue, "arrival overdue", now, events);
                    }
                    Some(Timer::ArrivalRealert) => {
                        let waited = (now - inc.accepted_ms.unwrap_or(now)) / 60_000;
                        let note = format!("arrival still overdue: accepted {waited} min ago");
                        self.alert(inc, EventKind::ArrivalOverdue, &note, now, events);
                    }
                    Some(Timer::ArrivalEscalate) => {
                        let waited = (now - inc.accepted_ms.unwrap_or(now)) / 60_000;
                        let who = inc.assigned.as_ref().map_or_else(String::new, |c| c.to_string());
                        let note = format!("caregiver {who} accepted {waited} min ago and has not arrived");
                        self.escalate_in(inc, EscalationReason::ArrivalOverdue, &note, now, events);
                    }
                    Some(Timer::OnSceneOverdue) => {
                        let on_scene = (now - inc.arrived_ms.unwrap_or(now)) / 60_000;
                        let note = format!("on scene for {} h {:02} min and still open", on_scene / 60, on_scene % 60);
                        self.alert(inc, EventKind::OnSceneOverdue, &note, now, events);
                    }
                    Some(Timer::Dispatch) => self.dispatch(inc, now, events),
                    None => return Ok(()),
                }
                fired = true;
                Ok(())
            });
            changed += usize::from(fired);
        }
        self.evict_closed(now);
        self.forget_keys(now);
        changed + self.drain_deferred()
    }

    /// Dispatches deferred routine incidents, oldest first, while the routine
    /// lane has room (at most `DRAIN_PER_TICK` per tick).
    fn drain_deferred(&self) -> usize {
        let lanes = &self.lanes;
        let mut drained = 0;
        while drained < DRAIN_PER_TICK {
            let busy = lanes.in_flight[0].load(Ordering::Acquire);
            if busy > 0 && busy >= self.config.routine_lane {
                break;
            }
            let Some(id) = self.deferred.pop() else { break };
            let _in_lane = InLane::enter(lanes, 0);
            let res = self.update(id, |inc, now, events| {
                if inc.state != IncidentState::Deferred {
                    return Ok(()); // cancelled or handled by a dispatcher meanwhile
                }
                inc.set_state(IncidentState::Pending);
                inc.updated_ms = now;
                self.dispatch(inc, now, events);
                Ok(())
            });
            match res {
                Ok(_) => {
                    lanes.deferred.fetch_sub(1, Ordering::AcqRel);
                    drained += 1;
                }
                Err(e) => {
                    tracing::warn!(incident = %id, error = %e, "deferred incident not dispatched; kept for later");
                    self.deferred.push(id);
                    break;
                }
            }
        }
        drained
    }

    /// Routine incidents parked as DEFERRED.
    pub fn deferred_count(&self) -> usize {
        self.lanes.deferred.load(Ordering::Acquire)
    }

    /// A console alert about a held incident that is taking too long (no
    /// change of state; the next alert is due a re-alert interval later).
    fn alert(&self, inc: &mut Incident, kind: EventKind, note: &str, now: i64, events: &mut Vec<IncidentEvent>) {
        inc.last_alert_ms = Some(now);
        inc.updated_ms = now;
        events.push(event(kind, inc, now, inc.assigned.as_ref(), note));
    }

    /// When an accepted incident's arrival becomes overdue, and when it is
    /// then escalated.
    fn arrival_deadlines(&self, inc: &Incident) -> Option<(i64, i64)> {
        let allowed = (inc.assigned_eta_s * 1000.0 * self.config.arrival_overdue_factor) as i64
            + self.config.arrival_overdue_slack_ms;
        let overdue = inc.accepted_ms? + allowed;
        Some((overdue, overdue + self.config.arrival_escalate_ms))
    }

    /// When the next timer of `inc` is due, if it has one. Every state that
    /// holds a caregiver has one, so no incident is silently stuck.
    fn deadline(&self, inc: &Incident) -> Option<i64> {
        // A re-alert interval is at least a timer tick (no alert per tick).
        let every = |ms: i64| ms.max(TIMER_TICK_MS);
        match inc.state {
            IncidentState::Offered => inc.offer_deadline_ms,
            IncidentState::Accepted => {
                let (overdue, escalate) = self.arrival_deadlines(inc)?;
                if !inc.arrival_overdue {
                    return Some(overdue);
                }
                let realert = inc.last_alert_ms.unwrap_or(overdue) + every(self.config.arrival_realert_ms);
                Some(realert.min(escalate))
            }
            IncidentState::OnScene => match inc.last_alert_ms {
                None => inc.arrived_ms.map(|a| a + self.config.on_scene_alert_ms),
                Some(last) => Some(last + every(self.config.on_scene_realert_ms)),
            },
            IncidentState::Pending => Some(inc.updated_ms),
            IncidentState::Escalated if inc.escalation != Some(EscalationReason::EmergencyServices) => {
                let after = match inc.severity {
                    Severity::Critical => self.config.handoff_critical_ms,
                    Severity::Urgent => self.config.handoff_urgent_ms,
                    Severity::Routine => return None,
                };
                inc.escalated_ms.map(|e| e + after)
            }
            _ => None,
        }
    }

    /// Which timer of `inc`, if any, is due at `now`.
    fn timer_due(&self, inc: &Incident, now: i64) -> Option<Timer> {
        if self.deadline(inc)? > now {
            return None;
        }
        match inc.state {
            IncidentState::Offered => Some(Timer::OfferExpired),
            IncidentState::Accepted if !inc.arrival_overdue => Some(Timer::ArrivalOverdue),
            IncidentState::Accepted => match self.arrival_deadlines(inc) {
                Some((_, escalate)) if now >= escalate => Some(Timer::ArrivalEscalate),
                _ => Some(Timer::ArrivalRealert),
            },
            IncidentState::OnScene => Some(Timer::OnSceneOverdue),
            IncidentState::Pending => Some(Timer::Dispatch),
            IncidentState::Escalated => Some(Timer::Handoff),
            _ => None,
        }
    }

    // ----------------------------------------------------------------- reads

    /// An incident from memory, or (closed and evicted) from the journal.
    pub fn incident(&self, id: IncidentId) -> Option<Incident> {
        match self.cell(id) {
            Some(cell) => cell.lock().clone(),
            None => self.journal.load(id),
        }
    }

    /// The incident an idempotency key led to, if it is known (a key past
    /// its window is looked up in the journal).
    pub fn incident_by_key(&self, key: &IdempotencyKey) -> Option<Incident> {
        let Some(cell) = self.keys.get(key).map(|c| c.clone()) else {
            return self.journal.load_by_key(key);
        };
        let id = match &*cell.lock() {
            KeyState::Done(id) => *id,
            _ => return None,
        };
        self.incident(id)
    }

    /// Every incident held in memory that `keep` accepts, by id.
    pub fn incidents(&self, keep: impl Fn(&Incident) -> bool) -> Vec<Incident> {
        let cells: Vec<IncidentCell> = self.incidents.iter().map(|e| e.value().clone()).collect();
        let mut out: Vec<Incident> = cells.iter().filter_map(|c| c.lock().clone()).filter(|i| keep(i)).collect();
        out.sort_by_key(|i| i.id);
        out
    }

    pub fn open_incidents(&self) -> Vec<Incident> {
        let ids: Vec<IncidentId> = self.open.iter().map(|e| *e.key()).collect();
        let mut out: Vec<Incident> = ids.into_iter().filter_map(|id| self.incident(id)).collect();
        out.sort_by_key(|i| i.id);
        out
    }

    pub fn kpis(&self) -> KpiSnapshot {
        let open: Vec<IncidentId> = self.open.iter().map(|e| *e.key()).collect();
        let states = open.into_iter().filter_map(|id| {
            let cell = self.cell(id)?;
            let state = cell.lock().as_ref().map(|i| i.state);
            state
        });
        self.kpis.snapshot(states)
    }

    /// Drops closed incidents older than `retain_closed_ms`, or beyond
    /// `max_closed_in_memory`, from memory (the journal has them).
    fn evict_closed(&self, now: i64) {
        let mut closed = self.closed.lock();
        while let Some(&(at, id)) = closed.front() {
            if at + self.config.retain_closed_ms > now && closed.len() <= self.config.max_closed_in_memory {
                break;
            }
            closed.pop_front();
            self.incidents.remove(&id);
        }
    }

    /// Forgets keys taken in more than `key_window_ms` ago whose incident is
    /// closed; a key of an open incident waits for the next window.
    fn forget_keys(&self, now: i64) {
        let mut log = self.key_log.lock();
        let mut keep = Vec::new();
        while let Some((at, _)) = log.front() {
            if at + self.config.key_window_ms > now {
                break;
            }
            let Some((_, key)) = log.pop_front() else { break };
            let Some(cell) = self.keys.get(&key).map(|c| c.clone()) else { continue };
            // A key logged once durable is `Done` for good.
            let id = match &*cell.lock() {
                KeyState::Done(id) => *id,
                _ => continue,
            };
            if self.open.contains_key(&id) {
                keep.push((now, key));
            } else {
                // No key lock is taken under the map's shard lock.
                self.keys.remove_if(&key, |_, c| Arc::ptr_eq(c, &cell));
            }
        }
        log.extend(keep);
    }

    // --------------------------------------------------------------- restore

    /// Rebuilds state read back from the journal after a restart: incidents
    /// (open ones re-claim their caregivers, who must be registered first) and
    /// every idempotency key seen. Idempotent: restoring twice changes nothing.
    pub fn restore(&self, incidents: Vec<Incident>, keys: Vec<(IdempotencyKey, IncidentId)>) {
        let now = self.now_ms();
        // When each incident last took an alarm in, and whether it is open:
        // keys older than the window of closed incidents are not restored.
        let mut last_alarm: HashMap<IncidentId, (i64, bool)> = HashMap::with_capacity(incidents.len());
        for inc in incidents {
            self.next_id.fetch_max(inc.id.0, Ordering::Relaxed);
            let known = self.incidents.contains_key(&inc.id);
            if !known {
                self.kpis.observe_restored(&inc);
            }
            last_alarm.insert(inc.id, (inc.last_alarm_ms.max(inc.received_ms), inc.state.is_open()));
            self.restore_key(inc.key.clone(), inc.id, &last_alarm, now);
            if inc.state.is_open() {
                if inc.state.holds_caregiver() {
                    for c in inc.assigned.iter().chain(inc.co_offer.as_ref().map(|(c, _)| c)) {
                        if let Some(slot) = self.roster.get(c).map(|s| s.clone()) {
                            slot.restore_claim(inc.id);
                        }
                    }
                }
                self.open.insert(inc.id, ());
                self.by_source.insert(source_of(&inc), inc.id);
                if let Some(d) = self.deadline(&inc) {
                    self.timers.schedule(d, inc.id);
                }
                if inc.state == IncidentState::Deferred && !known {
                    self.deferred.push(inc.id);
                    self.lanes.deferred.fetch_add(1, Ordering::AcqRel);
                }
            } else {
                // Closed: held only while recent; older ones are read back on demand.
                let closed = inc.closed_ms.unwrap_or(inc.updated_ms);
                if closed + self.config.retain_closed_ms <= now {
                    continue;
                }
                if !known {
                    self.closed.lock().push_back((closed, inc.id));
                }
            }
            self.incidents.insert(inc.id, Arc::new(Mutex::new(Some(inc))));
        }
        for (key, id) in keys {
            self.restore_key(key, id, &last_alarm, now);
        }
    }

    /// Remembers a restored key unless its window has passed (see `key_window_ms`).
    fn restore_key(&self, key: IdempotencyKey, id: IncidentId, last: &HashMap<IncidentId, (i64, bool)>, now: i64) {
        let at = match last.get(&id) {
            Some(&(at, open)) if open || at + self.config.key_window_ms > now => at,
            Some(_) => return,
            None => now,
        };
        if self.keys.insert(key.clone(), Arc::new(Mutex::new(KeyState::Done(id)))).is_none() {
            self.key_log.lock().push_back((at, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::geo::TravelMode;

    thread_local! {
        /// Caregivers whose next claim on this thread loses its race.
        static RACES: RefCell<Vec<CaregiverId>> = const { RefCell::new(Vec::new()) };
    }

    /// Takes `slot` for another incident just before this thread claims it,
    /// if a test asked for that.
    pub(super) fn lose_race(slot: &CaregiverSlot) {
        let lost = RACES.with(|r| {
            let mut r = r.borrow_mut();
            r.iter().position(|c| *c == slot.id).map(|i| r.swap_remove(i)).is_some()
        });
        if lost {
            assert!(slot.try_claim(IncidentId(u64::MAX), true), "{} was free to take", slot.id);
        }
    }

    fn cg(id: &str) -> CaregiverId {
        CaregiverId::parse("id", id).unwrap()
    }

    /// Four caregivers north of the alarm, nearest first: a, b, c, d.
    fn four() -> Dispatcher {
        line(&["a", "b", "c", "d"])
    }

    /// Caregivers north of the alarm 111 m apart, nearest first.
    fn line(ids: &[&str]) -> Dispatcher {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let d = Dispatcher::new(DispatchConfig::default(), Arc::new(NoJournal), Arc::new(NoSink), clock);
        for (i, id) in ids.iter().copied().enumerate() {
            let home = GeoPoint::new("home", 43.880 + 0.001 * i as f64, 125.370).unwrap();
            d.upsert_caregiver(CaregiverProfile { id: cg(id), skills: vec![], home, mode: TravelMode::Bike });
            d.set_status(&cg(id), CaregiverStatus::Available, None).unwrap();
        }
        d
    }

    fn fall(d: &Dispatcher, key: &str) -> Incident {
        let alarm = Alarm {
            key: IdempotencyKey::parse("k", key).unwrap(),
            elder: ElderId::parse("e", key).unwrap(),
            device: None,
            kind: AlarmKind::Fall,
            location: GeoPoint::new("at", 43.880, 125.370).unwrap(),
            occurred_ms: 0,
            detail: String::new(),
            required_skill: None,
        };
        d.raise(alarm).unwrap().incident
    }

    /// A critical alarm whose claim of one of the two nearest loses a race
    /// (the caregiver was taken between the search and the claim) is still
    /// offered to two: the next nearest replaces the lost one.
    #[test]
    fn a_lost_claim_of_a_critical_offer_is_replaced_by_the_next_nearest() {
        for (lost, offered) in [("b", ["a", "c"]), ("a", ["b", "c"])] {
            let d = four();
            RACES.with(|r| r.borrow_mut().push(cg(lost)));
            let inc = fall(&d, "k");
            assert!(RACES.with(|r| r.borrow().is_empty()), "the claim of {lost} was tried");
            assert_eq!(d.caregiver(&cg(lost)).unwrap().active_incident, Some(IncidentId(u64::MAX)));
            let held = (inc.assigned.clone(), inc.co_offer.as_ref().map(|c| c.0.clone()));
            assert_eq!(held, (Some(cg(offered[0])), Some(cg(offered[1]))), "{lost} lost its race");
            for c in offered {
                assert_eq!(d.caregiver(&cg(c)).unwrap().active_incident, Some(inc.id));
            }
            assert_eq!(d.caregiver(&cg("d")).unwrap().status, CaregiverStatus::Available, "claims stop at two");
        }
    }

    /// A critical alarm whose first search finds only one caregiver it can
    /// claim (the other three were taken meanwhile) searches once more for
    /// its second offer.
    #[test]
    fn a_critical_alarm_searches_again_when_its_first_search_yields_one_claim() {
        let d = line(&["a", "b", "c", "d", "e"]);
        RACES.with(|r| r.borrow_mut().extend(["b", "c", "d"].map(cg)));
        let inc = fall(&d, "k");
        assert!(RACES.with(|r| r.borrow().is_empty()), "b, c and d were tried");
        let held = (inc.assigned.clone(), inc.co_offer.as_ref().map(|c| c.0.clone()));
        assert_eq!(held, (Some(cg("a")), Some(cg("e"))));
        assert_eq!(d.caregiver(&cg("e")).unwrap().active_incident, Some(inc.id));
    }
}
