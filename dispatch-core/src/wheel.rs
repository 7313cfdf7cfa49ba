//! A hashed timing wheel: deadlines hashed into `slots` buckets of `tick_ms`
//! each. Scheduling locks one bucket (many threads schedule at once);
//! expiring walks only the buckets passed since the previous call, so a tick
//! costs what is due, not what is pending. Entries more than one revolution
//! away stay in their bucket until their round comes.
//!
//! Expiry is exact: an entry is returned by the first `expire(now)` with
//! `now >= deadline`, never earlier, and exactly once.

use parking_lot::{Mutex, RwLock};

/// Entries of one bucket: (deadline, item).
type Bucket<T> = Mutex<Vec<(i64, T)>>;

pub struct TimerWheel<T> {
    tick_ms: i64,
    buckets: Box<[Bucket<T>]>,
    /// The last tick wholly in the past at the previous `expire` (the bucket
    /// of the current tick is scanned again, as it may hold later deadlines).
    /// Scheduling holds it shared, expiring exclusively, so no entry can land
    /// in a bucket that is being passed over.
    cursor: RwLock<i64>,
}

impl<T> TimerWheel<T> {
    /// A wheel of `slots` buckets of `tick_ms`, starting at `start_ms`.
    pub fn new(tick_ms: i64, slots: usize, start_ms: i64) -> Self {
        assert!(tick_ms > 0 && slots > 0, "a timer wheel needs a positive tick and at least one slot");
        TimerWheel {
            tick_ms,
            buckets: (0..slots).map(|_| Mutex::new(Vec::new())).collect(),
            cursor: RwLock::new(start_ms.div_euclid(tick_ms) - 1),
        }
    }

    fn bucket(&self, tick: i64) -> &Bucket<T> {
        &self.buckets[tick.rem_euclid(self.buckets.len() as i64) as usize]
    }

    /// Schedules `item` at `deadline_ms`; a deadline already passed fires at
    /// the next `expire`.
    pub fn schedule(&self, deadline_ms: i64, item: T) {
        self.schedule_all(std::iter::once((deadline_ms, item)));
    }

    /// Schedules many entries, taking each bucket's lock once per run of
    /// entries that fall in it (a batch's deadlines mostly share one tick).
    pub fn schedule_all(&self, entries: impl IntoIterator<Item = (i64, T)>) {
        let cursor = self.cursor.read();
        let tick_of = |deadline: i64| deadline.div_euclid(self.tick_ms).max(*cursor + 1);
        let mut entries = entries.into_iter().peekable();
        while let Some((deadline, item)) = entries.next() {
            let tick = tick_of(deadline);
            let mut bucket = self.bucket(tick).lock();
            bucket.push((deadline, item));
            while let Some(next) = entries.next_if(|(d, _)| tick_of(*d) == tick) {
                bucket.push(next);
            }
        }
    }

    /// Moves every entry due at `now_ms` into `out` (with its deadline).
    pub fn expire(&self, now_ms: i64, out: &mut Vec<(i64, T)>) {
        let mut cursor = self.cursor.write();
        let now_tick = now_ms.div_euclid(self.tick_ms);
        if now_tick <= *cursor {
            return; // the clock went back
        }
        // Past more than a revolution, every bucket is visited once.
        let from = (*cursor + 1).max(now_tick - self.buckets.len() as i64 + 1);
        for tick in from..=now_tick {
            let mut b = self.bucket(tick).lock();
            let mut i = 0;
            while i < b.len() {
                if b[i].0 <= now_ms {
                    out.push(b.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        *cursor = now_tick - 1;
    }

    /// Entries pending.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fires_once_at_or_after_the_deadline_even_far_ahead() {
        let w = TimerWheel::new(100, 8, 0);
        w.schedule(250, "a");
        w.schedule(5_000, "far"); // many revolutions ahead
        w.schedule(-10, "past");
        let mut out = Vec::new();
        w.expire(99, &mut out);
        assert_eq!(out, vec![(-10, "past")]);
        out.clear();
        w.expire(249, &mut out);
        assert!(out.is_empty());
        w.expire(250, &mut out);
        assert_eq!(out, vec![(250, "a")]);
        out.clear();
        w.expire(4_999, &mut out);
        assert!(out.is_empty());
        w.expire(60_000, &mut out);
        assert_eq!(out, vec![(5_000, "far")]);
        assert!(w.is_empty());
    }

    proptest! {
        /// Random schedules (single and batched) and expiries against a plain list: each entry comes
        /// out exactly once, at the first expire whose time reaches its deadline.
        #[test]
        fn matches_a_naive_timer_list(
            tick in 1i64..500,
            slots in 1usize..64,
            ops in proptest::collection::vec((any::<bool>(), 0i64..20_000), 1..300),
        ) {
            let w = TimerWheel::new(tick, slots, 0);
            let mut naive: Vec<(i64, usize)> = Vec::new();
            let mut now = 0i64;
            for (n, (is_schedule, x)) in ops.into_iter().enumerate() {
                if is_schedule {
                    let deadline = now + x - 1_000;
                    if x % 3 == 0 {
                        // A batch: two entries in one tick, one several ticks on.
                        let batch = [(deadline, n * 10 + 1), (deadline + tick / 2, n * 10 + 2), (deadline + 7 * tick, n * 10 + 3)];
                        w.schedule_all(batch);
                        naive.extend(batch);
                    } else {
                        w.schedule(deadline, n * 10);
                        naive.push((deadline, n * 10));
                    }
                } else {
                    now += x / 10;
                    let mut got = Vec::new();
                    w.expire(now, &mut got);
                    got.sort_unstable();
                    let mut want: Vec<(i64, usize)> = naive.iter().copied().filter(|e| e.0 <= now).collect();
                    naive.retain(|e| e.0 > now);
                    want.sort_unstable();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(w.len(), naive.len());
        }
    }
}
