//! Geospatial index of caregivers: one uniform lat/lon grid per travel mode,
//! its cells side by side in one array (a row of cells is contiguous memory),
//! each cell holding its first few entries inline (the position the slot was
//! filed at, the slot) and the rest in an immutable spill block. Knows nothing of
//! incidents; reads a slot's status, skills and id only for candidates that
//! already beat the current k-th travel time.
//!
//! Readers never lock: a query pins the epoch once and reads each cell under
//! its sequence number (a seqlock: copy the entries, then check that no
//! writer came in between, else read again). A location update rewrites the
//! one or two cells it touches under a per-cell writer lock; replaced spill
//! blocks and the references of removed entries are released through the
//! epoch, so updates run concurrently with queries and there is no rebuild.
//! Keeping entries inline matters: a query touches about seven cells, and a
//! pointer per cell to a separate block made it wait on two cache misses per
//! cell instead of one (3.7 µs against 1 µs at 100,000 caregivers).
//!
//! A query visits the (mode, ring) pairs best-first by the lower bound of
//! their travel time: rings of slow modes stop early (a walker 300 m away
//! cannot beat a car 1 km away). Within a ring, cells whose rectangle cannot
//! hold anything better are skipped before they are loaded. Distances are
//! compared as chords of the unit sphere, from the latitude difference with a
//! series for small angles (no library trigonometry per entry); the
//! survivors' distance is the haversine of [`GeoPoint::distance_m`], from the
//! same chord.
//!
//! The cells of a grid live on a torus of `TORUS` x `TORUS` buckets: cell
//! (row, col) goes to bucket (row mod TORUS, col mod TORUS). A city smaller
//! than the torus (about 70 x 50 km at 44°N) maps one cell to one bucket;
//! a larger area shares buckets between far-apart cells, which costs time
//! (their entries fail the distance test) but never correctness.

use std::f64::consts::PI;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::epoch::{self, Atomic, Guard, Owned, Shared};
use parking_lot::Mutex;

use crate::geo::{GeoPoint, TravelMode, TravelModel, EARTH_RADIUS_KM};
use crate::roster::{unpack, CaregiverSlot, SlotRef, StatusCounts};
use crate::types::{CaregiverId, CaregiverStatus};

const R_M: f64 = EARTH_RADIUS_KM * 1000.0;
/// Cells per degree of latitude and of longitude (0.0025°: about 280 m x 200 m at 44°N).
const CELLS_PER_DEG: f64 = 400.0;
/// The side of a cell in radians of latitude (or longitude).
const RAD_PER_CELL: f64 = PI / 180.0 / CELLS_PER_DEG;
const TORUS_BITS: u32 = 8;
const TORUS: usize = 1 << TORUS_BITS;
/// Blocks of 16 x 16 buckets keep counts of the free caregivers filed there
/// (per mode; [`StatusCounts`]), so rings through empty country or through a
/// district where everyone is busy skip cells without loading them, and a
/// wide search reads only blocks where someone is free.
const BLOCK_BITS: u32 = 4;
pub(crate) const BLOCKS: usize = 1 << (2 * (TORUS_BITS - BLOCK_BITS));
/// A search still short of `k` after this many rings of one mode reads that
/// mode's blocks with someone free whole instead (the city is sparse there,
/// or the filter rejects most caregivers).
const FULL_SCAN_RING: i32 = 16;
/// At this ring a search short of `k` counts the blocks with someone free of
/// the mode, and reads them whole at once if there are at most
/// `FEW_FREE_BLOCKS` (a storm: nearly everyone busy, the rings would only
/// walk past busy blocks).
const FEW_CHECK_RING: i32 = 3;
const FEW_FREE_BLOCKS: usize = 8;
/// Modes in the order a query prefers them on equal bounds (fastest first).
const MODES: [TravelMode; 3] = [TravelMode::Car, TravelMode::Bike, TravelMode::Walk];
/// One degree of arc in metres: the lower bound for any point more than a
/// degree of latitude away, which lets the longitude bound use one cosine.
const ONE_DEG_M: f64 = R_M * PI / 180.0;
/// Degrees of latitude per metre of meridian arc.
const DEG_PER_M: f64 = 1.0 / ONE_DEG_M;
/// sin(1°) and cos(1°).
const SIN_1_DEG: f64 = 0.017_452_406_437_283_51;
const COS_1_DEG: f64 = 0.9998476951563913;
/// Slack, metres, against rounding in cell assignment and bounds.
const SLACK_M: f64 = 1e-3;

fn mode_index(m: TravelMode) -> usize {
    match m {
        TravelMode::Car => 0,
        TravelMode::Bike => 1,
        TravelMode::Walk => 2,
    }
}

/// Where the index has filed a slot: its mode's grid, its cell, the cell's
/// block (for the free counts) and the position it was filed at (the packed
/// `f32` pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Filing {
    pub(crate) mode: usize,
    row: i32,
    col: i32,
    pub(crate) block: usize,
    pos: u64,
}

/// What a candidate must satisfy.
#[derive(Debug, Default, Clone)]
pub struct MatchFilter<'a> {
    /// Required skill: its bit mask and its name (to confirm a shared bit).
    pub skill: Option<(u64, &'a str)>,
    /// Caregivers that already declined or let the offer expire.
    pub exclude: &'a [CaregiverId],
    /// Also consider caregivers on a scheduled visit (pre-emption for critical alarms).
    pub allow_on_visit: bool,
    /// Search radius, metres.
    pub max_radius_m: f64,
}

/// A caregiver found by a query, with its estimated travel time.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub slot: SlotRef,
    pub eta_s: f64,
    pub distance_m: f64,
}

/// One caregiver as filed in a cell: the position it was filed at (the
/// packed `f32` pair, exactly what the slot holds) and its slot. The cell
/// owns one strong reference to the slot per entry (taken by
/// [`GridIndex::upsert`], released through the epoch when the entry goes), so
/// the pointer stays valid for any reader pinned while it was filed.
#[derive(Debug, Clone, Copy)]
struct Entry {
    pos: u64,
    slot: NonNull<CaregiverSlot>,
}

// SAFETY: an entry is a counted reference to a `CaregiverSlot` (Send + Sync),
// released only through the epoch.
unsafe impl Send for Entry {}
unsafe impl Sync for Entry {}

impl Entry {
    /// The slot. Valid while the guard under which the entry was read is held.
    fn slot(&self) -> &CaregiverSlot {
        // SAFETY: see `Entry`: the reference the cell owns outlives every
        // reader pinned while the entry was filed.
        unsafe { self.slot.as_ref() }
    }

    /// A new strong reference to the slot.
    fn slot_ref(&self) -> SlotRef {
        // SAFETY: as in `slot`; the pointer came from `Arc::into_raw`.
        unsafe {
            Arc::increment_strong_count(self.slot.as_ptr());
            Arc::from_raw(self.slot.as_ptr())
        }
    }
}

/// Below this many radians the Taylor series of sine and cosine to the
/// ninth/tenth power are exact to rounding (the first omitted term is under
/// 1e-16 of the result).
const SMALL_RAD: f64 = 0.05;

/// Sine and cosine of `x`: by series for the small half-angles of a city
/// (a few multiplications instead of the library's range reduction).
fn sin_cos(x: f64) -> (f64, f64) {
    if x.abs() >= SMALL_RAD {
        return x.sin_cos();
    }
    let x2 = x * x;
    let sin = x * (1.0 - x2 * (1.0 / 6.0) * (1.0 - x2 * (1.0 / 20.0) * (1.0 - x2 * (1.0 / 42.0))));
    let cos = 1.0 - x2 * 0.5 * (1.0 - x2 * (1.0 / 12.0) * (1.0 - x2 * (1.0 / 30.0) * (1.0 - x2 * (1.0 / 56.0))));
    (sin, cos)
}

/// An upper bound of the squared chord of a great-circle distance (the chord
/// is `2 sin(d / 2R) <= d / R`), so a point at exactly `distance_m` passes.
fn chord2_limit(distance_m: f64) -> f64 {
    let c = distance_m.max(0.0) / R_M;
    c * c * (1.0 + 1e-9) + 1e-24
}

/// Great-circle distance, metres, of a squared chord: the haversine distance
/// of [`GeoPoint::distance_m`] (they agree to about 1e-9 m), without the trigonometry
/// of both endpoints.
fn chord2_to_m(c2: f64) -> f64 {
    2.0 * R_M * (c2.sqrt() / 2.0).min(1.0).asin()
}

/// Entries of a cell beyond its inline ones: a length and the entries in one
/// allocation, never changed once published. Every element is initialised.
type Block = [MaybeUninit<Entry>];

/// Entries a cell keeps inline: at 100,000 caregivers over a city a cell of
/// one mode holds about two (more than seven in one in a thousand), so a
/// spill block, a second cache miss behind the cell, is the exception.
const INLINE: usize = 7;

/// One cell of one mode: two cache lines, its first `INLINE` entries inline
/// as plain words under a sequence number (odd while a writer is in it).
/// All-zero bytes are an empty cell.
#[repr(C, align(128))]
struct Cell {
    seq: AtomicU32,
    len: AtomicU32,
    spill: Atomic<Block>,
    /// Each entry as its packed position and its slot pointer.
    inline: [[AtomicU64; 2]; INLINE],
}

const _: () = assert!(std::mem::size_of::<Cell>() == 128, "a cell is two cache lines");

/// The entries of a cell as one reader saw them: the inline ones copied, the
/// spill block borrowed under the guard.
struct CellView<'g> {
    inline: [MaybeUninit<Entry>; INLINE],
    n_inline: usize,
    spill: &'g [Entry],
}

impl CellView<'_> {
    fn for_each(&self, mut f: impl FnMut(&Entry)) {
        for e in &self.inline[..self.n_inline] {
            // SAFETY: the first `n_inline` were written by `Cell::read`.
            f(unsafe { e.assume_init_ref() });
        }
        self.spill.iter().for_each(f);
    }
}

impl Cell {
    /// A consistent copy of the cell: retried while a writer is in it.
    fn read<'g>(&self, guard: &'g Guard) -> CellView<'g> {
        let mut view = CellView { inline: [MaybeUninit::uninit(); INLINE], n_inline: 0, spill: &[] };
        let mut attempt = 0u32;
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 1 {
                attempt = attempt.wrapping_add(1);
                // A writer is in the cell; if it was preempted there, give
                // it the core rather than spin through its time slice.
                if attempt.is_multiple_of(64) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            let n = (self.len.load(Ordering::Relaxed) as usize).min(INLINE);
            for (dst, w) in view.inline.iter_mut().zip(&self.inline).take(n) {
                let (pos, ptr) = (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed));
                // A torn read may see a null or stale pointer; it is never
                // used unless the sequence check below passes.
                let slot = NonNull::new(ptr as *mut CaregiverSlot).unwrap_or(NonNull::dangling());
                *dst = MaybeUninit::new(Entry { pos, slot });
            }
            let spill = self.spill.load(Ordering::Relaxed, guard);
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == seq {
                view.n_inline = n;
                // SAFETY: the pointer is from the version `seq` names, whose
                // writer published the block before releasing `seq`; blocks
                // are destroyed only after unlinking, through the epoch.
                view.spill = unsafe { view_block(spill) };
                return view;
            }
        }
    }

    /// A hint to bring the cell into cache; no effect on what anyone reads.
    fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is a hint; the address is a live `Cell`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // The first line: the header and three entries, all a city
            // cell usually has.
            _mm_prefetch::<_MM_HINT_T0>(self as *const Cell as *const i8);
        }
    }

    /// The entries, for the cell's writer (who holds its stripe).
    fn entries(&self, guard: &Guard) -> Vec<Entry> {
        let mut v = Vec::with_capacity(self.len.load(Ordering::Relaxed) as usize);
        self.read(guard).for_each(|e| v.push(*e));
        v
    }

    /// Replaces the entries; the caller holds the cell's writer stripe.
    fn write(&self, entries: &[Entry], guard: &Guard) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        for (w, e) in self.inline.iter().zip(entries) {
            w[0].store(e.pos, Ordering::Relaxed);
            w[1].store(e.slot.as_ptr() as u64, Ordering::Relaxed);
        }
        self.len.store(entries.len() as u32, Ordering::Relaxed);
        let rest = entries.get(INLINE..).unwrap_or_default();
        let old = self.spill.swap(publish(rest, guard), Ordering::Relaxed, guard);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        if !old.is_null() {
            // SAFETY: `old` is unlinked (we hold the writer stripe, so nobody
            // else swapped it); readers pinned before the swap keep it alive.
            unsafe { guard.defer_unchecked(move || destroy(old)) };
        }
    }
}

/// Writer locks, striped over the cells: a writer holds its cell's stripe
/// while it rewrites the cell, so two writers never race on one.
const WRITER_STRIPES: usize = 1024;

fn publish<'g>(entries: &[Entry], guard: &'g Guard) -> Shared<'g, Block> {
    if entries.is_empty() {
        return Shared::null();
    }
    let mut block = Owned::<Block>::init(entries.len());
    for (dst, e) in block.iter_mut().zip(entries) {
        dst.write(*e);
    }
    block.into_shared(guard)
}

/// Frees a spill block (its entries' references belong to the cell).
///
/// # Safety
/// `block` must come from [`publish`], be unlinked, and no reader may hold it.
unsafe fn destroy(block: Shared<'_, Block>) {
    drop(block.into_owned());
}

/// The entries of a published block.
///
/// # Safety
/// `block` must be null or come from [`publish`] and still be protected by a guard.
unsafe fn view_block<'g>(block: Shared<'g, Block>) -> &'g [Entry] {
    match block.as_ref() {
        // `publish` initialised every element; MaybeUninit<T> has T's layout.
        Some(b) => &*(b as *const Block as *const [Entry]),
        None => &[],
    }
}

/// The cells of all modes: rows and columns of the whole globe, folded onto
/// the torus of buckets.
struct Cells {
    rows: i32,
    cols: i32,
    /// Every cell; see [`Cells::cell`] for the layout.
    cells: CellArray,
    writers: Box<[Mutex<()>]>,
    /// Entries per mode.
    len: [AtomicUsize; 3],
}

/// Layout of the cell array: rows of `TORUS` buckets and one spare (so rows
/// do not fall on the same cache sets), each bucket its three modes side by side.
const ROW_CELLS: usize = (TORUS + 1) * 3;

/// The cells of all modes in one zeroed allocation aligned to a huge page.
/// (A `Box<[Cell]>` would free it with the wrong alignment.)
struct CellArray {
    ptr: std::ptr::NonNull<Cell>,
    len: usize,
}

// SAFETY: it owns its cells like a `Box<[Cell]>`, and `Cell` is `Send + Sync`.
unsafe impl Send for CellArray {}
unsafe impl Sync for CellArray {}

impl CellArray {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::array::<Cell>(len)
            .and_then(|l| l.align_to(HUGE_PAGE))
            .unwrap_or_else(|_| unreachable!("a fixed 25 MB"))
    }

    fn zeroed(len: usize) -> Self {
        let layout = CellArray::layout(len);
        // SAFETY: a non-zero layout; all-zero bytes are an empty `Cell` (zero
        // counters, null spill). Zeroed pages are committed only when a cell
        // is first written.
        let p = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Cell>();
        let Some(ptr) = std::ptr::NonNull::new(p) else { std::alloc::handle_alloc_error(layout) };
        advise_huge_pages(p.cast(), layout.size());
        CellArray { ptr, len }
    }
}

impl std::ops::Deref for CellArray {
    type Target = [Cell];

    fn deref(&self) -> &[Cell] {
        // SAFETY: `len` initialised (zeroed) cells, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

const _: () = assert!(!std::mem::needs_drop::<Cell>(), "CellArray frees cells without dropping them");

impl Drop for CellArray {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout; `Cell` needs no drop
        // of its own (`Cells::drop` releases what entries hold first).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), CellArray::layout(self.len)) };
    }
}

const HUGE_PAGE: usize = 2 << 20;

/// Asks Linux for transparent huge pages under the cells: a query reads a
/// few cells at random in 25 MB, and with 4 KiB pages each of those reads
/// also missed the TLB (thirteen 2 MiB pages stay in it). Only advice: where
/// huge pages are off or unavailable, nothing changes.
#[cfg(target_os = "linux")]
fn advise_huge_pages(p: *mut u8, len: usize) {
    // SAFETY: `p..p + len` is one live allocation of ours; MADV_HUGEPAGE
    // changes no contents, only how the pages are backed.
    let _ = unsafe { libc::madvise(p.cast(), len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut u8, _: usize) {}

impl Cells {
    fn new() -> Self {
        Cells {
            rows: (180.0 * CELLS_PER_DEG) as i32,
            cols: (360.0 * CELLS_PER_DEG) as i32,
            cells: CellArray::zeroed(TORUS * ROW_CELLS),
            writers: (0..WRITER_STRIPES).map(|_| Mutex::new(())).collect(),
            len: Default::default(),
        }
    }

    fn locate(&self, lat: f64, lon: f64) -> (i32, i32) {
        let row = (((lat + 90.0) * CELLS_PER_DEG).floor() as i32).clamp(0, self.rows - 1);
        let col = (((lon + 180.0) * CELLS_PER_DEG).floor() as i32).rem_euclid(self.cols);
        (row, col)
    }

    /// The bucket index of cell (row, col); `col` may be unwrapped (beyond ±180°).
    fn bucket(&self, row: i32, col: i32) -> usize {
        let col = if (0..self.cols).contains(&col) { col } else { col.rem_euclid(self.cols) };
        let mask = TORUS - 1;
        (row as usize & mask) << TORUS_BITS | (col as usize & mask)
    }

    /// The block (16 x 16 buckets, the unit of the free counts) of a bucket.
    fn block(bucket: usize) -> usize {
        let side = TORUS_BITS - BLOCK_BITS;
        (bucket >> TORUS_BITS >> BLOCK_BITS) << side | (bucket & (TORUS - 1)) >> BLOCK_BITS
    }

    /// Rewrites the entries of mode `m` in cell (row, col) by `f`.
    fn edit(&self, m: usize, row: i32, col: i32, guard: &Guard, f: impl FnOnce(&mut Vec<Entry>)) {
        let b = self.bucket(row, col);
        let _writer = self.writers[b % WRITER_STRIPES].lock();
        let cell = self.cell(m, b);
        let mut v = cell.entries(guard);
        f(&mut v);
        cell.write(&v, guard);
    }

    /// The cell of mode `m` at bucket `b`.
    fn cell(&self, m: usize, bucket: usize) -> &Cell {
        let (row, col) = (bucket >> TORUS_BITS, bucket & (TORUS - 1));
        &self.cells[row * ROW_CELLS + col * 3 + m]
    }

    /// Every bucket of the blocks `keep` accepts.
    fn buckets_of(&self, keep: impl Fn(usize) -> bool) -> impl Iterator<Item = usize> {
        let side = TORUS_BITS - BLOCK_BITS;
        let block_side = 1usize << BLOCK_BITS;
        (0..BLOCKS).filter(move |b| keep(*b)).flat_map(move |b| {
            let (r0, c0) = ((b >> side) << BLOCK_BITS, (b & ((1 << side) - 1)) << BLOCK_BITS);
            (0..block_side * block_side).map(move |i| (r0 + i / block_side) << TORUS_BITS | (c0 + i % block_side))
        })
    }
}

impl Drop for Cells {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no reader or writer of these cells remains.
        let guard = unsafe { epoch::unprotected() };
        for cell in self.cells.iter() {
            if cell.len.load(Ordering::Relaxed) == 0 {
                continue;
            }
            for e in cell.entries(guard) {
                // SAFETY: the reference the cell owned for this entry.
                drop(unsafe { Arc::from_raw(e.slot.as_ptr()) });
            }
            let spill = cell.spill.swap(Shared::null(), Ordering::Relaxed, guard);
            if !spill.is_null() {
                // SAFETY: unlinked, and nobody else can read it.
                unsafe { destroy(spill) };
            }
        }
    }
}

/// The caregivers by travel mode and position. See the module documentation.
pub struct GridIndex {
    cells: Cells,
    /// The status counts every slot filed here keeps (with per-block free counts).
    counts: Arc<StatusCounts>,
}

impl Default for GridIndex {
    fn default() -> Self {
        GridIndex::new(Arc::default())
    }
}

impl std::fmt::Debug for GridIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridIndex").field("len", &self.len()).finish()
    }
}

impl GridIndex {
    /// An empty index for slots created with `counts`.
    pub fn new(counts: Arc<StatusCounts>) -> Self {
        GridIndex { cells: Cells::new(), counts }
    }

    /// The counts the slots filed here must be created with.
    pub fn counts(&self) -> &Arc<StatusCounts> {
        &self.counts
    }

    /// Files `slot` under its current position and travel mode, moving it if
    /// needed. Call after every change of either. Upserts of one slot are
    /// serialised by the slot's filing lock; of different slots, run in parallel.
    pub fn upsert(&self, slot: &SlotRef) {
        debug_assert!(Arc::ptr_eq(slot.counts(), &self.counts), "{} counts elsewhere", slot.id);
        let mut filed = slot.filed.lock();
        let pos = slot.packed_position();
        let (lat, lon) = unpack(pos);
        let mode = mode_index(slot.mode());
        let cells = &self.cells;
        let (row, col) = cells.locate(lat, lon);
        let block = Cells::block(cells.bucket(row, col));
        let to = Filing { mode, row, col, block, pos };
        if filed.at == Some(to) {
            return;
        }
        // The slot's free share goes to the new block before the slot
        // appears there, and leaves the old one after it is gone there.
        let share = filed.net;
        let moves_share = filed.at.is_none_or(|from| (from.block, from.mode) != (block, mode));
        if moves_share {
            for (k, n) in share.iter().enumerate().filter(|(_, n)| **n != 0) {
                self.counts.block(to, k).fetch_add(*n, Ordering::SeqCst);
            }
        }
        let guard = epoch::pin();
        let ptr = Arc::as_ptr(slot);
        let is_slot = |e: &Entry| std::ptr::eq(e.slot.as_ptr(), ptr);
        match filed.at {
            Some(from) if (from.mode, from.row, from.col) == (mode, row, col) => {
                cells.edit(mode, row, col, &guard, |v| match v.iter_mut().find(|e| is_slot(e)) {
                    Some(e) => e.pos = to.pos,
                    None => debug_assert!(false, "{} missing from its cell", slot.id),
                })
            }
            from => {
                // Add, then remove: a query overlapping the move may see the
                // caregiver at either position, at both (it keeps one), or,
                // reading the new cell before and the old one after, at neither.
                cells.len[mode].fetch_add(1, Ordering::Relaxed);
                // SAFETY: `Arc::into_raw` never returns null.
                let owned = unsafe { NonNull::new_unchecked(Arc::into_raw(slot.clone()).cast_mut()) };
                cells.edit(mode, row, col, &guard, |v| v.push(Entry { pos: to.pos, slot: owned }));
                if let Some(from) = from {
                    cells.edit(from.mode, from.row, from.col, &guard, |v| match v.iter().position(is_slot) {
                        Some(i) => {
                            let gone = v.swap_remove(i).slot;
                            // SAFETY: the cell's reference for this entry,
                            // released once no reader can hold the entry.
                            unsafe { guard.defer_unchecked(move || drop(Arc::from_raw(gone.as_ptr()))) };
                        }
                        None => debug_assert!(false, "{} missing from its cell", slot.id),
                    });
                    cells.len[from.mode].fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(from) = filed.at.filter(|_| moves_share) {
            for (k, n) in share.iter().enumerate().filter(|(_, n)| **n != 0) {
                self.counts.block(from, k).fetch_sub(*n, Ordering::SeqCst);
            }
        }
        filed.at = Some(to);
    }

    /// Up to `k` caregivers nearest to `at` by estimated travel time, best
    /// first, among those the filter admits: `Available` (or `OnVisit` with
    /// `allow_on_visit`), with the skill, not excluded, within the radius.
    /// Exact for the positions and modes filed by the last upserts.
    pub fn nearest(&self, at: &GeoPoint, k: usize, filter: &MatchFilter<'_>, model: &TravelModel) -> Vec<Candidate> {
        let mut s = Search::new(at, k, filter, model);
        if k == 0 || filter.max_radius_m.is_nan() || filter.max_radius_m < 0.0 {
            return s.best;
        }
        let guard = epoch::pin();
        let mut ring = [0i32; 3];
        let mut live = [true; 3];
        for (m, len) in self.cells.len.iter().enumerate() {
            live[m] = len.load(Ordering::Relaxed) > 0;
        }
        let mut lower_m = [0.0f64; 3];
        s.prefetch(&self.cells, &live);
        loop {
            let mut pick = None;
            let mut pick_eta = f64::INFINITY;
            for m in 0..3 {
                if !live[m] {
                    continue;
                }
                if lower_m[m] > s.reach_m[m] {
                    live[m] = false;
                    continue;
                }
                let eta = lower_m[m] * s.s_per_m[m];
                if pick.is_none() || eta < pick_eta {
                    pick = Some(m);
                    pick_eta = eta;
                }
            }
            let Some(m) = pick else { break };
            let on_visit = filter.allow_on_visit;
            let free = |b: usize| self.counts.may_be_free(b, m, on_visit);
            let few = || s.best.len() < k && (0..BLOCKS).filter(|b| free(*b)).nth(FEW_FREE_BLOCKS).is_none();
            if ring[m] >= FULL_SCAN_RING || 2 * ring[m] + 1 > TORUS as i32 || (ring[m] == FEW_CHECK_RING && few()) {
                // Far out (and before the rings wrap around the torus), or
                // few blocks to read: every bucket of the mode where someone
                // may be free, once.
                for b in self.cells.buckets_of(free) {
                    s.collect(m, self.cells.cell(m, b), &guard);
                }
                s.settle(m);
                live[m] = false;
                continue;
            }
            s.scan_ring(&self.cells, &self.counts, m, ring[m], &guard);
            ring[m] += 1;
            lower_m[m] = s.ring_lower_bound_m(ring[m]);
        }
        let mut found = std::mem::take(&mut s.found);
        found.clear();
        FOUND.set(found);
        s.best
    }

    /// Number of filed caregivers (moves in flight may count twice).
    pub fn len(&self) -> usize {
        self.cells.len.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    /// The `found` buffer of the thread's last query, kept (empty) for the
    /// next so a query allocates only its answer.
    static FOUND: std::cell::Cell<Vec<(f64, Entry)>> = const { std::cell::Cell::new(Vec::new()) };
}

/// State of one query.
struct Search<'q> {
    /// The query point, degrees, and the sine and cosine of its latitude.
    lat: f64,
    lon: f64,
    sin_q: f64,
    cos_q: f64,
    k: usize,
    filter: &'q MatchFilter<'q>,
    model: &'q TravelModel,
    /// The query in cell coordinates (fractional row and column).
    fr: f64,
    fc: f64,
    row: i32,
    col: i32,
    /// Lower bound of `sqrt(cos(lat_q) cos(lat_p))` for points within a degree of latitude.
    cos_min: f64,
    /// Seconds per metre of straight line, per mode.
    s_per_m: [f64; 3],
    /// Distance a candidate of each mode must beat (radius, or the k-th travel time).
    reach_m: [f64; 3],
    reach_chord2: [f64; 3],
    best: Vec<Candidate>,
    /// Entries of the current ring that passed the chord test, with their squared chord.
    found: Vec<(f64, Entry)>,
}

impl<'q> Search<'q> {
    fn new(at: &GeoPoint, k: usize, filter: &'q MatchFilter<'q>, model: &'q TravelModel) -> Self {
        let fr = (at.lat() + 90.0) * CELLS_PER_DEG;
        let fc = (at.lon() + 180.0) * CELLS_PER_DEG;
        let (sin_q, cos_q) = at.lat().to_radians().sin_cos();
        // cos(|lat| + 1°) by the addition formula.
        let cos_far = (cos_q * COS_1_DEG - sin_q.abs() * SIN_1_DEG).max(0.0);
        let s_per_m = MODES.map(|m| model.detour_factor / model.speed_mps(m));
        let radius = filter.max_radius_m;
        Search {
            lat: at.lat(),
            lon: at.lon(),
            sin_q,
            cos_q,
            k,
            filter,
            model,
            fr,
            fc,
            row: (fr.floor() as i32).clamp(0, (180.0 * CELLS_PER_DEG) as i32 - 1),
            col: fc.floor() as i32,
            cos_min: (cos_q * cos_far).sqrt(),
            s_per_m,
            reach_m: [radius; 3],
            reach_chord2: [chord2_limit(radius); 3],
            best: Vec::with_capacity(k + 1),
            found: FOUND.take(),
        }
    }

    /// Lower bound, metres, of the distance from the query to a point whose
    /// latitude and longitude differ by at least these many cells.
    fn lower_bound_m(&self, dr: f64, dc: f64) -> f64 {
        let lat_m = R_M * RAD_PER_CELL * dr;
        // 2 sin(x / 2) >= x - x^3 / 24 for x in [0, pi].
        let x = (RAD_PER_CELL * dc).min(PI);
        let lon_m = (R_M * self.cos_min * (x - x * x * x / 24.0)).min(ONE_DEG_M);
        lat_m.max(lon_m)
    }

    /// Lower bound, metres, of the distance to any point outside rings 0..r.
    fn ring_lower_bound_m(&self, r: i32) -> f64 {
        let (lo_r, hi_r) = ((self.row - r + 1) as f64, (self.row + r) as f64);
        let (lo_c, hi_c) = ((self.col - r + 1) as f64, (self.col + r) as f64);
        let dr = (self.fr - lo_r).min(hi_r - self.fr).max(0.0);
        let dc = (self.fc - lo_c).min(hi_c - self.fc).max(0.0);
        // Outside the box means beyond it in latitude or in longitude.
        (self.lower_bound_m(dr, 0.0).min(self.lower_bound_m(0.0, dc)) - SLACK_M).max(0.0)
    }

    /// Lower bound, metres, of the distance to any point of cell (row, col).
    fn cell_lower_bound_m(&self, row: i32, col: i32) -> f64 {
        let dr = (row as f64 - self.fr).max(self.fr - (row + 1) as f64).max(0.0);
        let dc = (col as f64 - self.fc).max(self.fc - (col + 1) as f64).max(0.0);
        (self.lower_bound_m(dr, dc) - SLACK_M).max(0.0)
    }

    /// Asks the memory system for the home cell and its eight neighbours in
    /// every mode at once: the ring loop's branches depend on what it reads,
    /// so without this its cache misses queue one behind the other.
    fn prefetch(&self, cells: &Cells, live: &[bool; 3]) {
        for row in (self.row - 1).max(0)..=(self.row + 1).min(cells.rows - 1) {
            for col in self.col - 1..=self.col + 1 {
                let b = cells.bucket(row, col);
                for m in (0..3).filter(|m| live[*m]) {
                    cells.cell(m, b).prefetch();
                }
            }
        }
    }

    fn scan_ring(&mut self, cells: &Cells, counts: &StatusCounts, m: usize, r: i32, guard: &Guard) {
        let rows = cells.rows;
        let on_visit = self.filter.allow_on_visit;
        // The home cell and its neighbours are read anyway (prefetched at the
        // start); further out, a block where nobody is free is skipped. The
        // counts are written by every status change and move, so not reading
        // them near home keeps the common query off those cache lines.
        let check = r > 1;
        let visit = |s: &mut Self, row: i32, col: i32| {
            if (0..rows).contains(&row) && s.cell_lower_bound_m(row, col) <= s.reach_m[m] {
                let b = cells.bucket(row, col);
                if !check || counts.may_be_free(Cells::block(b), m, on_visit) {
                    s.collect(m, cells.cell(m, b), guard);
                }
            }
        };
        let (r0, c0) = (self.row, self.col);
        if r == 0 {
            visit(self, r0, c0);
        } else {
            for c in (c0 - r)..=(c0 + r) {
                visit(self, r0 - r, c);
                visit(self, r0 + r, c);
            }
            for row in (r0 - r + 1)..=(r0 + r - 1) {
                visit(self, row, c0 - r);
                visit(self, row, c0 + r);
            }
        }
        self.settle(m);
    }

    /// Squared chord of the unit sphere from the query to a filed position:
    /// four times the haversine term of [`GeoPoint::distance_m`], computed
    /// from the latitude difference alone (the point's cosine by the addition
    /// formula), so a city-sized query needs no library trigonometry per entry.
    fn chord2(&self, lat: f64, lon: f64) -> f64 {
        let (sh, ch) = sin_cos(((lat - self.lat) / 2.0).to_radians());
        let (sin_d, cos_d) = (2.0 * sh * ch, 1.0 - 2.0 * sh * sh);
        let cos_p = self.cos_q * cos_d - self.sin_q * sin_d;
        let mut dlon = lon - self.lon;
        if dlon > 180.0 {
            dlon -= 360.0;
        } else if dlon < -180.0 {
            dlon += 360.0;
        }
        let (sl, _) = sin_cos((dlon / 2.0).to_radians());
        4.0 * (sh * sh + self.cos_q * cos_p * sl * sl)
    }

    /// Keeps the entries of a cell that pass the chord test of mode `m`.
    fn collect(&mut self, m: usize, cell: &Cell, guard: &Guard) {
        let limit = self.reach_chord2[m];
        // Degrees of latitude beyond reach: the meridian arc is a lower
        // bound of the distance, so such entries fail without the haversine.
        let lat_reach = (self.reach_m[m] + SLACK_M) * DEG_PER_M;
        cell.read(guard).for_each(|e| {
            let (lat, lon) = unpack(e.pos);
            if (lat - self.lat).abs() > lat_reach {
                return;
            }
            let c2 = self.chord2(lat, lon);
            if c2 <= limit {
                // The status is read if this entry survives the sort; start
                // its cache miss now, alongside the other cells'.
                e.slot().prefetch_status();
                self.found.push((c2, *e));
            }
        });
    }

    /// Checks the collected entries nearest first and keeps the best `k`.
    fn settle(&mut self, m: usize) {
        let mut found = std::mem::take(&mut self.found);
        found.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        for (c2, e) in found.drain(..) {
            if c2 > self.reach_chord2[m] {
                break;
            }
            self.consider(m, c2, &e);
        }
        self.found = found;
    }

    fn consider(&mut self, m: usize, c2: f64, e: &Entry) {
        let distance_m = chord2_to_m(c2);
        if distance_m > self.filter.max_radius_m {
            return;
        }
        let eta_s = self.model.eta_s(distance_m, MODES[m]);
        let k = self.k;
        if self.best.len() == k && eta_s >= self.best[k - 1].eta_s {
            return;
        }
        let slot = e.slot();
        match slot.status() {
            CaregiverStatus::Available => {}
            CaregiverStatus::OnVisit if self.filter.allow_on_visit => {}
            _ => return,
        }
        if self.filter.skill.is_some_and(|skill| !slot.holds(skill)) {
            return;
        }
        if self.filter.exclude.contains(&slot.id) {
            return;
        }
        if self.best.iter().any(|c| std::ptr::eq(Arc::as_ptr(&c.slot), slot)) {
            return; // seen twice while it moved between cells
        }
        let pos = self.best.partition_point(|c| c.eta_s <= eta_s);
        self.best.insert(pos, Candidate { slot: e.slot_ref(), eta_s, distance_m });
        self.best.truncate(k);
        if self.best.len() == k {
            let worst = self.best[k - 1].eta_s;
            for n in 0..3 {
                let reach = (worst / self.s_per_m[n]).min(self.filter.max_radius_m);
                self.reach_m[n] = reach;
                self.reach_chord2[n] = chord2_limit(reach);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::geo::TravelMode;
    use crate::roster::{CaregiverProfile, CaregiverSlot};
    use crate::types::IncidentId;

    const SKILLS: [&str; 3] = ["nurse", "dementia", "lift"];

    fn slot_with(grid: &GridIndex, i: usize, lat: f64, lon: f64, mode: TravelMode, skills: u64) -> SlotRef {
        let p = GeoPoint::new("p", lat, lon).unwrap();
        let names = (0..3).filter(|b| skills & 1 << b != 0).map(|b| SKILLS[b].to_string()).collect();
        let id = CaregiverId::parse("id", &format!("C{i}")).unwrap();
        let profile = CaregiverProfile { id, skills: names, home: p, mode };
        let s = Arc::new(CaregiverSlot::new(profile, skills, grid.counts().clone()));
        s.set_duty(CaregiverStatus::Available).unwrap();
        s
    }

    fn slot(grid: &GridIndex, i: usize, lat: f64, lon: f64, mode: TravelMode) -> SlotRef {
        slot_with(grid, i, lat, lon, mode, 0)
    }

    /// `n` free caregivers of every mode at points drawn by `spot`, filed in `grid`.
    fn filed(
        grid: &GridIndex,
        n: usize,
        seed: u64,
        spot: impl Fn(&mut rand::rngs::StdRng) -> (f64, f64),
    ) -> Arc<Vec<SlotRef>> {
        let modes = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let slots: Vec<SlotRef> = (0..n)
            .map(|i| {
                let (lat, lon) = spot(&mut rng);
                slot(grid, i, lat, lon, modes[i % 3])
            })
            .collect();
        slots.iter().for_each(|s| grid.upsert(s));
        Arc::new(slots)
    }

    fn admits(s: &CaregiverSlot, f: &MatchFilter<'_>) -> bool {
        let free = match s.status() {
            CaregiverStatus::Available => true,
            CaregiverStatus::OnVisit => f.allow_on_visit,
            _ => false,
        };
        free && f.skill.is_none_or(|(mask, _)| s.skills_mask() & mask == mask) && !f.exclude.contains(&s.id)
    }

    /// The `k` best travel times by scanning every slot.
    fn brute_force(slots: &[SlotRef], at: &GeoPoint, k: usize, f: &MatchFilter<'_>, model: &TravelModel) -> Vec<f64> {
        let mut etas: Vec<f64> = slots
            .iter()
            .filter(|s| admits(s, f))
            .filter_map(|s| {
                let (lat, lon) = s.position();
                let d = at.distance_m(&GeoPoint::new("p", lat, lon).unwrap());
                (d <= f.max_radius_m).then(|| model.eta_s(d, s.mode()))
            })
            .collect();
        etas.sort_by(f64::total_cmp);
        etas.truncate(k);
        etas
    }

    /// Same travel times as the brute force (to rounding), each candidate
    /// admitted by the filter, no caregiver twice, best first.
    fn check(got: &[Candidate], want: &[f64], f: &MatchFilter<'_>, model: &TravelModel) {
        let got_etas: Vec<f64> = got.iter().map(|c| c.eta_s).collect();
        assert_eq!(got.len(), want.len(), "got {got_etas:?}, want {want:?}");
        for (g, w) in got_etas.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.max(1.0), "got {got_etas:?}, want {want:?}");
        }
        for (n, c) in got.iter().enumerate() {
            assert!(admits(&c.slot, f), "{} is not admitted", c.slot.id);
            assert!(c.distance_m <= f.max_radius_m);
            assert!((c.eta_s - model.eta_s(c.distance_m, c.slot.mode())).abs() < 1e-9);
            assert!(got[..n].iter().all(|o| !Arc::ptr_eq(&o.slot, &c.slot)), "{} twice", c.slot.id);
        }
        assert!(got_etas.windows(2).all(|w| w[0] <= w[1]), "not sorted: {got_etas:?}");
    }

    /// The grid answer equals a brute-force scan on random cities, including
    /// after moves and with busy caregivers.
    #[test]
    fn nearest_matches_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let modes = [TravelMode::Walk, TravelMode::Bike, TravelMode::Car];
        let slots: Vec<SlotRef> = (0..2000)
            .map(|i| slot(&grid, i, 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3, modes[i % 3]))
            .collect();
        slots.iter().for_each(|s| grid.upsert(s));
        for (n, s) in slots.iter().enumerate() {
            if n % 3 == 0 {
                s.try_claim(IncidentId(n as u64 + 1), false);
            }
            if n % 5 == 0 {
                let p =
                    GeoPoint::new("p", 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3).unwrap();
                s.set_position(&p, 1);
                grid.upsert(s);
            }
        }
        assert_eq!(grid.len(), 2000);
        let filter = MatchFilter { max_radius_m: 50_000.0, ..Default::default() };
        for _ in 0..200 {
            let q = GeoPoint::new("q", 43.8 + rng.random::<f64>() * 0.2, 125.2 + rng.random::<f64>() * 0.3).unwrap();
            let got = grid.nearest(&q, 3, &filter, &model);
            check(&got, &brute_force(&slots, &q, 3, &filter, &model), &filter, &model);
        }
    }

    #[test]
    fn respects_radius_exclusions_and_skills() {
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let near = slot(&grid, 1, 43.880, 125.370, TravelMode::Walk);
        let far = slot(&grid, 2, 43.980, 125.370, TravelMode::Walk);
        grid.upsert(&near);
        grid.upsert(&far);
        let q = GeoPoint::new("q", 43.881, 125.371).unwrap();
        let excl = [near.id.clone()];
        let f = MatchFilter { exclude: &excl, max_radius_m: 5_000.0, ..Default::default() };
        assert!(grid.nearest(&q, 2, &f, &model).is_empty(), "far one is 11 km away");
        let f = MatchFilter { exclude: &excl, max_radius_m: 50_000.0, ..Default::default() };
        assert_eq!(grid.nearest(&q, 2, &f, &model)[0].slot.id, far.id);
        let f = MatchFilter { skill: Some((1 << 3, "nurse")), max_radius_m: 50_000.0, ..Default::default() };
        assert!(grid.nearest(&q, 2, &f, &model).is_empty());
    }

    /// A car 2 km away beats a walker 400 m away; a mode change re-files the caregiver.
    #[test]
    fn ranks_by_travel_time_and_follows_mode_changes() {
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let walker = slot(&grid, 1, 43.8809, 125.3700, TravelMode::Walk);
        let car = slot(&grid, 2, 43.8953, 125.3700, TravelMode::Car);
        grid.upsert(&walker);
        grid.upsert(&car);
        let q = GeoPoint::new("q", 43.8773, 125.3700).unwrap();
        let f = MatchFilter { max_radius_m: 30_000.0, ..Default::default() };
        let got: Vec<_> = grid.nearest(&q, 2, &f, &model).into_iter().map(|c| c.slot.id.clone()).collect();
        assert_eq!(got, [car.id.clone(), walker.id.clone()]);
        let mut p = walker.profile();
        p.mode = TravelMode::Car;
        walker.set_profile(p, 0);
        grid.upsert(&walker);
        assert_eq!(grid.nearest(&q, 1, &f, &model)[0].slot.id, walker.id);
        assert_eq!(grid.len(), 2);
    }

    #[test]
    fn small_angle_series_and_constants_match_the_library() {
        assert_eq!(SIN_1_DEG, 1f64.to_radians().sin());
        assert_eq!(COS_1_DEG, 1f64.to_radians().cos());
        for i in -1000..=1000 {
            let x = i as f64 * (SMALL_RAD * 1.2 / 1000.0);
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() <= 2.0 * f64::EPSILON * x.abs().max(f64::MIN_POSITIVE), "sin {x}");
            assert!((c - x.cos()).abs() <= 2.0 * f64::EPSILON, "cos {x}");
        }
    }

    /// Free counts per block stay at least the truth while caregivers move
    /// across blocks and change status on other threads (each thread also
    /// owns one caregiver, a witness nobody else touches), and are exact at rest.
    #[test]
    fn free_counts_follow_moves_and_status_changes() {
        let grid = Arc::new(GridIndex::default());
        // About 0.3° square: several blocks of 0.04°.
        let spot = |rng: &mut rand::rngs::StdRng| (43.7 + rng.random::<f64>() * 0.3, 125.2 + rng.random::<f64>() * 0.3);
        const SHARED: usize = 200;
        const THREADS: usize = 4;
        let slots = filed(&grid, SHARED + THREADS, 21, spot);
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (grid, slots) = (grid.clone(), slots.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(200 + t as u64);
                    let mine = &slots[SHARED + t];
                    let mut witnessed = 0;
                    for n in 0..20_000u64 {
                        let s = if rng.random_bool(0.3) { mine } else { &slots[rng.random_range(0..SHARED)] };
                        match rng.random_range(0..5) {
                            0 | 1 => {
                                let (lat, lon) = spot(&mut rng);
                                s.set_position(&GeoPoint::new("p", lat, lon).unwrap(), 1);
                                grid.upsert(s);
                            }
                            2 => {
                                let inc = IncidentId(t as u64 * 1_000_000 + n + 1);
                                if let Some(from) = s.try_claim_from(inc, rng.random_bool(0.5)) {
                                    s.release(inc, from == CaregiverStatus::OnVisit);
                                }
                            }
                            3 => drop(s.set_duty(CaregiverStatus::Available)),
                            _ => drop(s.set_duty(CaregiverStatus::OnVisit)),
                        }
                        let at = mine.filed.lock().at;
                        if let (CaregiverStatus::Available, Some(at)) = (mine.status(), at) {
                            witnessed += 1;
                            assert!(
                                grid.counts().may_be_free(at.block, at.mode, false),
                                "a free caregiver's block counted zero"
                            );
                        }
                    }
                    witnessed
                })
            })
            .collect();
        let witnessed: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(witnessed > 0, "the check never ran");
        let mut truth = std::collections::HashMap::<(usize, usize, usize), i64>::new();
        for s in slots.iter() {
            let at = s.filed.lock().at.unwrap();
            let k = match s.status() {
                CaregiverStatus::Available => 0,
                CaregiverStatus::OnVisit => 1,
                _ => continue,
            };
            *truth.entry((at.block, at.mode, k)).or_default() += 1;
        }
        for block in 0..BLOCKS {
            for m in 0..3 {
                for k in 0..2 {
                    let at = Filing { mode: m, row: 0, col: 0, block, pos: 0 };
                    let got = grid.counts().block(at, k).load(Ordering::SeqCst);
                    assert_eq!(got, truth.get(&(block, m, k)).copied().unwrap_or(0), "block {block} mode {m} kind {k}");
                }
            }
        }
    }

    /// Queries run while other threads move caregivers between cells (and
    /// in and out of spill blocks): every answer is admitted, sorted and
    /// without repeats; at rest the grid agrees with brute force; and the
    /// cells hold exactly one reference per caregiver, all released with the grid.
    #[test]
    fn queries_during_moves_and_references_are_balanced() {
        let model = TravelModel::default();
        let grid = Arc::new(GridIndex::default());
        // A tight cluster, so cells overflow their inline entries.
        let spot =
            |rng: &mut rand::rngs::StdRng| (43.88 + rng.random::<f64>() * 0.01, 125.35 + rng.random::<f64>() * 0.01);
        let slots = filed(&grid, 300, 11, spot);
        let movers: Vec<_> = (0..2u64)
            .map(|t| {
                let (grid, slots) = (grid.clone(), slots.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(100 + t);
                    for _ in 0..20_000 {
                        let s = &slots[rng.random_range(0..slots.len())];
                        let (lat, lon) = spot(&mut rng);
                        s.set_position(&GeoPoint::new("p", lat, lon).unwrap(), 1);
                        grid.upsert(s);
                    }
                })
            })
            .collect();
        let filter = MatchFilter { max_radius_m: 50_000.0, ..Default::default() };
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..3_000 {
            let (lat, lon) = spot(&mut rng);
            let got = grid.nearest(&GeoPoint::new("q", lat, lon).unwrap(), 5, &filter, &model);
            assert_eq!(got.len(), 5, "300 free caregivers within reach");
            for (n, c) in got.iter().enumerate() {
                assert!(admits(&c.slot, &filter));
                assert!(got[..n].iter().all(|o| !Arc::ptr_eq(&o.slot, &c.slot)), "{} twice", c.slot.id);
            }
            assert!(got.windows(2).all(|w| w[0].eta_s <= w[1].eta_s));
        }
        movers.into_iter().for_each(|m| m.join().unwrap());
        assert_eq!(grid.len(), slots.len());
        for _ in 0..100 {
            let (lat, lon) = spot(&mut rng);
            let q = GeoPoint::new("q", lat, lon).unwrap();
            check(&grid.nearest(&q, 4, &filter, &model), &brute_force(&slots, &q, 4, &filter, &model), &filter, &model);
        }
        drop(grid);
        // Entries released through the epoch go once the epoch advances
        // (other tests of this process may hold it back for a moment).
        let released = || slots.iter().all(|s| Arc::strong_count(s) == 1);
        for _ in 0..100_000 {
            if released() {
                break;
            }
            epoch::pin().flush();
            std::thread::yield_now();
        }
        for s in slots.iter() {
            assert_eq!(Arc::strong_count(s), 1, "{} still referenced", s.id);
        }
    }

    /// Caregivers across the antimeridian and near a pole are found.
    #[test]
    fn wraps_at_the_antimeridian() {
        let model = TravelModel::default();
        let grid = GridIndex::default();
        let east = slot(&grid, 1, 65.0, 179.9995, TravelMode::Bike);
        let west = slot(&grid, 2, 65.0, -179.9990, TravelMode::Bike);
        let polar = slot(&grid, 3, 89.9999, 10.0, TravelMode::Bike);
        [&east, &west, &polar].iter().for_each(|s| grid.upsert(s));
        let f = MatchFilter { max_radius_m: 30_000.0, ..Default::default() };
        let q = GeoPoint::new("q", 65.0, -179.9999).unwrap();
        let got: Vec<_> = grid.nearest(&q, 3, &f, &model).into_iter().map(|c| c.slot.id.clone()).collect();
        assert_eq!(got, [east.id.clone(), west.id.clone()]);
        let q = GeoPoint::new("q", 89.9999, -170.0).unwrap();
        assert_eq!(grid.nearest(&q, 1, &f, &model)[0].slot.id, polar.id);
    }

    fn arb_mode() -> impl Strategy<Value = TravelMode> {
        prop_oneof![Just(TravelMode::Walk), Just(TravelMode::Bike), Just(TravelMode::Car)]
    }

    /// (lat, lon offset from the base, mode, status 0..4, skill mask, excluded, moves to).
    type Cg = (f64, f64, TravelMode, u8, u64, bool, Option<(f64, f64)>);

    fn arb_caregiver(spread: f64) -> impl Strategy<Value = Cg> {
        (
            -spread..spread,
            -spread..spread,
            arb_mode(),
            0u8..4,
            0u64..8,
            prop::bool::weighted(0.1),
            prop::option::weighted(0.3, (-spread..spread, -spread..spread)),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// `nearest` agrees with a brute-force scan over random positions,
        /// modes, statuses, skills, exclusions, radii and moves.
        #[test]
        fn nearest_agrees_with_brute_force(
            base in (-60.0f64..60.0, -179.0f64..179.0),
            spread in prop_oneof![Just(0.003f64), Just(0.05), Just(0.5)],
            cgs in prop::collection::vec(arb_caregiver(0.5), 0..120),
            queries in prop::collection::vec((-0.5f64..0.5, -0.5f64..0.5), 1..8),
            k in 1usize..6,
            skill in prop::option::of(0usize..3),
            allow_on_visit in any::<bool>(),
            radius in prop_oneof![Just(150.0f64), 100.0f64..60_000.0],
        ) {
            let model = TravelModel::default();
            let grid = GridIndex::default();
            let at = |dlat: f64, dlon: f64| {
                let s = spread / 0.5;
                GeoPoint::new("p", base.0 + dlat * s, (base.1 + dlon * s).clamp(-180.0, 180.0)).unwrap()
            };
            let mut slots = Vec::new();
            let mut exclude = Vec::new();
            for (i, (dlat, dlon, mode, status, skills, excluded, moved)) in cgs.into_iter().enumerate() {
                let p = at(dlat, dlon);
                let s = slot_with(&grid, i, p.lat(), p.lon(), mode, skills);
                grid.upsert(&s);
                match status {
                    0 => s.set_duty(CaregiverStatus::OffDuty).unwrap(),
                    1 => {}
                    2 => prop_assert!(s.try_claim(IncidentId(i as u64 + 1), false)),
                    _ => s.set_duty(CaregiverStatus::OnVisit).unwrap(),
                }
                if let Some((mlat, mlon)) = moved {
                    s.set_position(&at(mlat, mlon), 1);
                    grid.upsert(&s);
                }
                if excluded {
                    exclude.push(s.id.clone());
                }
                slots.push(s);
            }
            prop_assert_eq!(grid.len(), slots.len());
            let f = MatchFilter {
                skill: skill.map(|b| (1u64 << b, SKILLS[b])),
                exclude: &exclude,
                allow_on_visit,
                max_radius_m: radius,
            };
            for (dlat, dlon) in queries {
                let q = at(dlat, dlon);
                let got = grid.nearest(&q, k, &f, &model);
                check(&got, &brute_force(&slots, &q, k, &f, &model), &f, &model);
            }
        }
    }
}
