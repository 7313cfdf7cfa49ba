//! The caregiver roster: one slot per caregiver with its live state in atomics.
//!
//! Architecture Invariant: a caregiver holds at most one active incident. The
//! only way to take a caregiver is [`CaregiverSlot::try_claim`], a
//! compare-and-swap of the status from a free state to `Busy`; the only way to
//! free one is [`CaregiverSlot::release`] by the incident that holds it.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::geo::{GeoPoint, TravelMode};
use crate::index::{Filing, BLOCKS};
use crate::types::{CaregiverId, CaregiverStatus, IncidentId};

/// Static description of a caregiver, as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct CaregiverProfile {
    pub id: CaregiverId,
    pub skills: Vec<String>,
    pub home: GeoPoint,
    pub mode: TravelMode,
}

/// Live state of one caregiver. Shared by the index cells and the roster map.
#[derive(Debug)]
pub struct CaregiverSlot {
    pub id: CaregiverId,
    status: AtomicU8,
    /// Position as two `f32` (lat, lon) packed in one word, so a reader never
    /// sees a latitude of one fix with the longitude of another.
    position: AtomicU64,
    /// Milliseconds since the epoch of the last position fix.
    seen_ms: AtomicU64,
    /// The incident held, 0 = none.
    active: AtomicU64,
    mode: AtomicU8,
    skills_mask: AtomicU64,
    /// Where the index has filed this slot, and what the slot has added to
    /// that block's free counts. The lock serialises the index's moves of one
    /// caregiver with its entries into and exits from the free statuses.
    pub(crate) filed: Mutex<Filed>,
    counts: Arc<StatusCounts>,
    profile: RwLock<CaregiverProfile>,
}

/// A position as two `f32` (lat, lon) in one word: how a slot holds it and
/// how the index files it.
fn pack(p: &GeoPoint) -> u64 {
    ((p.lat() as f32).to_bits() as u64) << 32 | (p.lon() as f32).to_bits() as u64
}

#[inline]
pub(crate) fn unpack(bits: u64) -> (f64, f64) {
    (f32::from_bits((bits >> 32) as u32) as f64, f32::from_bits(bits as u32) as f64)
}

fn mode_to_u8(m: TravelMode) -> u8 {
    match m {
        TravelMode::Walk => 0,
        TravelMode::Bike => 1,
        TravelMode::Car => 2,
    }
}

impl CaregiverSlot {
    pub(crate) fn new(profile: CaregiverProfile, skills_mask: u64, counts: Arc<StatusCounts>) -> Self {
        counts.enter(CaregiverStatus::OffDuty as u8);
        CaregiverSlot {
            id: profile.id.clone(),
            status: AtomicU8::new(CaregiverStatus::OffDuty as u8),
            position: AtomicU64::new(pack(&profile.home)),
            seen_ms: AtomicU64::new(0),
            active: AtomicU64::new(0),
            mode: AtomicU8::new(mode_to_u8(profile.mode)),
            skills_mask: AtomicU64::new(skills_mask),
            filed: Mutex::new(Filed::default()),
            counts,
            profile: RwLock::new(profile),
        }
    }

    /// A hint to bring the status into cache (a search is about to read it).
    pub(crate) fn prefetch_status(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint; the address is a live field.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                &self.status as *const AtomicU8 as *const i8,
            );
        }
    }

    pub fn status(&self) -> CaregiverStatus {
        CaregiverStatus::from_u8(self.status.load(Ordering::Acquire))
    }

    pub fn profile(&self) -> CaregiverProfile {
        self.profile.read().clone()
    }

    pub(crate) fn has_skill(&self, skill: &str) -> bool {
        self.profile.read().skills.iter().any(|s| s == skill)
    }

    /// Whether the caregiver holds `skill`, given as its mask from
    /// [`SkillTable::require`] and its name: one AND, and a look at the
    /// profile only for a tag on the shared bit.
    pub(crate) fn holds(&self, (mask, name): (u64, &str)) -> bool {
        self.skills_mask() & mask == mask && (mask != SHARED_BIT || self.has_skill(name))
    }

    pub(crate) fn set_profile(&self, profile: CaregiverProfile, skills_mask: u64) {
        self.mode.store(mode_to_u8(profile.mode), Ordering::Relaxed);
        self.skills_mask.store(skills_mask, Ordering::Relaxed);
        *self.profile.write() = profile;
    }

    /// Last known position (f32 precision, about a metre).
    pub fn position(&self) -> (f64, f64) {
        unpack(self.packed_position())
    }

    /// The position as held: two `f32` packed by [`pack`].
    pub(crate) fn packed_position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    pub(crate) fn set_position(&self, p: &GeoPoint, at_ms: i64) {
        self.position.store(pack(p), Ordering::Relaxed);
        self.seen_ms.store(at_ms.max(0) as u64, Ordering::Relaxed);
    }

    pub fn last_seen_ms(&self) -> i64 {
        self.seen_ms.load(Ordering::Relaxed) as i64
    }

    pub fn mode(&self) -> TravelMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => TravelMode::Bike,
            2 => TravelMode::Car,
            _ => TravelMode::Walk,
        }
    }

    pub(crate) fn skills_mask(&self) -> u64 {
        self.skills_mask.load(Ordering::Relaxed)
    }

    /// The incident this caregiver holds, if any.
    pub fn active_incident(&self) -> Option<IncidentId> {
        match self.active.load(Ordering::Acquire) {
            0 => None,
            n => Some(IncidentId(n)),
        }
    }

    /// Counts the slot into `status` (before it enters it): the roster's
    /// count, and for a free status the free count of the block it is filed in.
    fn enter(&self, status: u8) {
        self.counts.enter(status);
        self.free_share(status, 1);
    }

    /// Counts the slot out of `status` (after it has left it).
    fn leave(&self, status: u8) {
        self.free_share(status, -1);
        self.counts.leave(status);
    }

    /// Adds `delta` to the slot's share of its block's free count of
    /// `status`, if that is a free status.
    fn free_share(&self, status: u8, delta: i64) {
        if let Some(k) = free_kind(status) {
            let mut filed = self.filed.lock();
            filed.net[k] += delta;
            if let Some(at) = filed.at {
                self.counts.block(at, k).fetch_add(delta, Ordering::SeqCst);
            }
        }
    }

    pub(crate) fn counts(&self) -> &Arc<StatusCounts> {
        &self.counts
    }

    /// Takes the caregiver for `incident`: succeeds only if the caregiver is
    /// `Available` (or `OnVisit` when `preempt_visit`), atomically.
    pub fn try_claim(&self, incident: IncidentId, preempt_visit: bool) -> bool {
        self.try_claim_from(incident, preempt_visit).is_some()
    }

    /// [`try_claim`](Self::try_claim), answering the status the caregiver
    /// was taken from: `OnVisit` is a scheduled visit pre-empted.
    pub fn try_claim_from(&self, incident: IncidentId, preempt_visit: bool) -> Option<CaregiverStatus> {
        let busy = CaregiverStatus::Busy as u8;
        self.enter(busy);
        let from = [CaregiverStatus::Available, CaregiverStatus::OnVisit]
            .into_iter()
            .take(if preempt_visit { 2 } else { 1 })
            .find(|from| self.status.compare_exchange(*from as u8, busy, Ordering::AcqRel, Ordering::Acquire).is_ok());
        let claimed = from.is_some();
        self.leave(from.map_or(busy, |f| f as u8));
        if claimed {
            let prev = self.active.swap(incident.0, Ordering::AcqRel);
            debug_assert_eq!(prev, 0, "caregiver {} claimed while holding inc-{prev}", self.id);
        }
        from
    }

    /// Frees the caregiver if, and only if, `incident` holds it: back on the
    /// scheduled visit it was taken from if `back_to_visit` (the incident
    /// knows: the holder never accepted it), else available. Returns whether
    /// it did.
    pub fn release(&self, incident: IncidentId, back_to_visit: bool) -> bool {
        if self.active.compare_exchange(incident.0, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let back = if back_to_visit { CaregiverStatus::OnVisit } else { CaregiverStatus::Available };
            self.enter(back as u8);
            let from = self.status.swap(back as u8, Ordering::AcqRel);
            self.leave(from);
            true
        } else {
            false
        }
    }

    /// Restores a claim read back from the journal after a restart, or
    /// given back after a change the journal refused.
    pub(crate) fn restore_claim(&self, incident: IncidentId) {
        self.active.store(incident.0, Ordering::Release);
        self.enter(CaregiverStatus::Busy as u8);
        let from = self.status.swap(CaregiverStatus::Busy as u8, Ordering::AcqRel);
        self.leave(from);
    }

    /// Sets a duty status chosen by the caregiver. Refused while the caregiver
    /// holds an incident (it must be declined or closed first).
    pub(crate) fn set_duty(&self, status: CaregiverStatus) -> Result<(), IncidentId> {
        debug_assert!(status != CaregiverStatus::Busy);
        let mut cur = self.status.load(Ordering::Acquire);
        self.enter(status as u8);
        loop {
            if cur == CaregiverStatus::Busy as u8 {
                self.leave(status as u8);
                return Err(self.active_incident().unwrap_or(IncidentId(0)));
            }
            match self.status.compare_exchange(cur, status as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.leave(cur);
                    return Ok(());
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Interns skill tags into bits, so the match filter is one AND. Up to 64 skills.
/// Caregivers per status across a roster, kept by the slots' transitions.
/// A count is raised before a slot enters the status and lowered after it
/// leaves it, so at any instant it is at least the true number: a zero
/// proves that nobody has the status (dispatch then skips the index search,
/// which is what keeps a storm in which everyone is busy cheap), and at rest
/// the counts are exact.
///
/// The same rule keeps a count per block of the index, travel mode and free
/// status (`Available`, `OnVisit`) of the caregivers filed there: a search
/// skips every cell of a block whose count is zero, so a storm in which only
/// a few are free somewhere does not read the whole city per alarm. A slot's
/// share moves with it (see [`Filed`]).
#[derive(Debug)]
pub struct StatusCounts {
    all: [AtomicI64; 4],
    /// Per block, mode and free kind.
    blocks: Box<[[[AtomicI64; 2]; 3]]>,
}

impl Default for StatusCounts {
    fn default() -> Self {
        StatusCounts { all: Default::default(), blocks: (0..BLOCKS).map(|_| Default::default()).collect() }
    }
}

impl StatusCounts {
    pub fn get(&self, status: CaregiverStatus) -> i64 {
        self.all[status as usize].load(Ordering::SeqCst)
    }

    fn enter(&self, status: u8) {
        self.all[status as usize & 3].fetch_add(1, Ordering::SeqCst);
    }

    fn leave(&self, status: u8) {
        self.all[status as usize & 3].fetch_sub(1, Ordering::SeqCst);
    }

    /// The free count of kind `k` (0 `Available`, 1 `OnVisit`) at a filing's block and mode.
    pub(crate) fn block(&self, at: Filing, k: usize) -> &AtomicI64 {
        &self.blocks[at.block][at.mode][k]
    }

    /// Whether block `block` may hold a caregiver of mode `m` that a search
    /// admits: an `Available` one, or an `OnVisit` one when `on_visit`.
    pub(crate) fn may_be_free(&self, block: usize, m: usize, on_visit: bool) -> bool {
        let c = &self.blocks[block][m];
        c[0].load(Ordering::SeqCst) > 0 || (on_visit && c[1].load(Ordering::SeqCst) > 0)
    }
}

/// Where a slot is filed and its net share of the free counts there, by kind
/// (raised before the slot enters a free status, lowered after it leaves).
/// The index moves the share with the slot: it raises the new block before
/// the slot appears there and lowers the old one after it is gone there.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Filed {
    pub(crate) at: Option<Filing>,
    pub(crate) net: [i64; 2],
}

/// The free-count kind of a status, if it is one a search may take.
fn free_kind(status: u8) -> Option<usize> {
    match status {
        s if s == CaregiverStatus::Available as u8 => Some(0),
        s if s == CaregiverStatus::OnVisit as u8 => Some(1),
        _ => None,
    }
}

#[derive(Debug, Default)]
pub struct SkillTable {
    bits: DashMap<String, u8>,
}

impl SkillTable {
    /// Bit mask of `skills`, interning new tags. Tags beyond the 63rd share bit
    /// 63; a match on that bit is confirmed against the profile (`SHARED_BIT`).
    pub fn intern(&self, skills: &[String]) -> u64 {
        skills.iter().fold(0u64, |mask, s| {
            let next = self.bits.len().min(63) as u8;
            let bit = *self.bits.entry(s.clone()).or_insert(next);
            mask | 1u64 << bit
        })
    }

    /// Mask a caregiver must contain to have `skill`; `None` if no caregiver
    /// was ever registered with it.
    pub fn require(&self, skill: &str) -> Option<u64> {
        self.bits.get(skill).map(|b| 1u64 << *b)
    }
}

pub(crate) type SlotRef = Arc<CaregiverSlot>;

/// The bit shared by every skill tag after the 63rd.
pub(crate) const SHARED_BIT: u64 = 1 << 63;

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> CaregiverSlot {
        let profile = CaregiverProfile {
            id: CaregiverId::parse("id", "C1").unwrap(),
            skills: vec![],
            home: GeoPoint::new("home", 43.88, 125.37).unwrap(),
            mode: TravelMode::Bike,
        };
        CaregiverSlot::new(profile, 0, Arc::default())
    }

    #[test]
    fn claim_needs_an_available_caregiver_and_release_needs_the_holder() {
        let s = slot();
        assert!(!s.try_claim(IncidentId(1), false), "off duty");
        s.set_duty(CaregiverStatus::Available).unwrap();
        assert!(s.try_claim(IncidentId(1), false));
        assert!(!s.try_claim(IncidentId(2), true), "already busy");
        assert_eq!(s.set_duty(CaregiverStatus::OffDuty), Err(IncidentId(1)));
        assert!(!s.release(IncidentId(2), false));
        assert!(s.release(IncidentId(1), false));
        assert_eq!(s.status(), CaregiverStatus::Available);
        s.set_duty(CaregiverStatus::OnVisit).unwrap();
        assert!(!s.try_claim(IncidentId(3), false));
        assert_eq!(s.try_claim_from(IncidentId(3), true), Some(CaregiverStatus::OnVisit), "a visit pre-empted");
        assert!(s.release(IncidentId(3), true));
        assert_eq!(s.status(), CaregiverStatus::OnVisit, "never accepted: back on the visit");
        assert_eq!(s.try_claim_from(IncidentId(4), true), Some(CaregiverStatus::OnVisit));
        assert!(s.release(IncidentId(4), false));
        assert_eq!(s.try_claim_from(IncidentId(5), true), Some(CaregiverStatus::Available), "accepted: left the visit");
    }

    #[test]
    fn status_counts_follow_every_transition_and_never_undercount() {
        // Slots 0..8 are shared by every thread (contended transitions); slot
        // 8 + t belongs to thread t alone, so its status is stable while that
        // thread reads the count: a witness the check can trust.
        const SHARED: usize = 8;
        const THREADS: usize = 4;
        let counts: Arc<StatusCounts> = Arc::default();
        let slots: Vec<Arc<CaregiverSlot>> = (0..SHARED + THREADS)
            .map(|i| {
                let mut p = slot().profile();
                p.id = CaregiverId::parse("id", &format!("C{i}")).unwrap();
                Arc::new(CaregiverSlot::new(p, 0, counts.clone()))
            })
            .collect();
        let truth = |s: CaregiverStatus| slots.iter().filter(|x| x.status() == s).count() as i64;
        let all =
            [CaregiverStatus::OffDuty, CaregiverStatus::Available, CaregiverStatus::Busy, CaregiverStatus::OnVisit];
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (slots, counts) = (slots.clone(), counts.clone());
                std::thread::spawn(move || {
                    let mut x = t as u64 * 7919 + 1;
                    let mine = &slots[SHARED + t];
                    let mut witnessed = 0;
                    for n in 0..20_000u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let s = if x & 2 == 0 { mine } else { &slots[(x >> 2) as usize % SHARED] };
                        let inc = IncidentId(t as u64 * 1_000_000 + n + 1);
                        match (x >> 8) % 4 {
                            0 => {
                                if let Some(from) = s.try_claim_from(inc, x & 1 == 0) {
                                    s.release(inc, from == CaregiverStatus::OnVisit);
                                }
                            }
                            1 => drop(s.set_duty(CaregiverStatus::Available)),
                            2 => drop(s.set_duty(CaregiverStatus::OnVisit)),
                            _ => drop(s.set_duty(CaregiverStatus::OffDuty)),
                        }
                        // Whatever the others are doing, a free caregiver is counted.
                        if mine.status() == CaregiverStatus::Available {
                            witnessed += 1;
                            assert!(counts.get(CaregiverStatus::Available) >= 1, "a zero count hid a free caregiver");
                        }
                    }
                    witnessed
                })
            })
            .collect();
        let witnessed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(witnessed > 0, "the check never ran");
        for s in all {
            assert_eq!(counts.get(s), truth(s), "{s:?} at rest");
        }
    }

    #[test]
    fn position_is_packed_to_about_a_metre() {
        let s = slot();
        let p = GeoPoint::new("p", 43.912345, 125.412345).unwrap();
        s.set_position(&p, 5);
        let (lat, lon) = s.position();
        assert!((lat - p.lat()).abs() < 2e-5 && (lon - p.lon()).abs() < 2e-5);
        assert_eq!(s.last_seen_ms(), 5);
    }

    #[test]
    fn skills_intern_to_bits() {
        let t = SkillTable::default();
        let m = t.intern(&["nurse".into(), "dementia".into()]);
        assert_eq!(m.count_ones(), 2);
        assert_eq!(t.require("nurse").unwrap() & m, t.require("nurse").unwrap());
        assert!(t.require("driver").is_none());
    }
}
