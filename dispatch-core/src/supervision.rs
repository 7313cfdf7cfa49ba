//! Device supervision, as alarm-transmission standards require: a device
//! declares a heartbeat interval, and a device silent for `missed` intervals
//! (3 by default) is reported offline once — a DEVICE_OFFLINE alarm — until
//! it is heard again.
//!
//! Each watched device has exactly one live entry in a timer wheel: a
//! heartbeat only stores its time, and when the entry fires the deadline is
//! recomputed from the last heartbeat and re-armed if it moved (lazy
//! re-arming, so heartbeats cost a map update, not a wheel insert).

use dashmap::DashMap;

use crate::types::{DeviceId, ElderId};
use crate::wheel::TimerWheel;

/// Heartbeats a device may miss before it is reported offline.
pub const DEFAULT_MISSED_HEARTBEATS: u32 = 3;

#[derive(Debug, Clone)]
struct Watch {
    elder: ElderId,
    interval_ms: i64,
    last_heard_ms: i64,
    offline: bool,
    /// Offline, but its report's alarm could not be raised: report it again
    /// when its wheel entry fires.
    report_again: bool,
    /// Deadline of the device's live wheel entry; other entries are stale.
    armed_ms: i64,
}

/// A device that fell silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offline {
    pub device: DeviceId,
    pub elder: ElderId,
    pub last_heard_ms: i64,
    pub interval_ms: i64,
    pub silent_ms: i64,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The device is not supervised (unknown, or no heartbeat interval).
    NotWatched,
    Online,
    /// It had been reported offline and is back.
    BackOnline,
}

pub struct Supervisor {
    missed: i64,
    devices: DashMap<DeviceId, Watch>,
    wheel: TimerWheel<DeviceId>,
}

impl Supervisor {
    /// `missed` heartbeats make a device offline; `now_ms` starts the wheel.
    pub fn new(missed: u32, now_ms: i64) -> Self {
        // One-second buckets for an hour; longer intervals wait out extra rounds.
        Supervisor {
            missed: missed.max(1) as i64,
            devices: DashMap::new(),
            wheel: TimerWheel::new(1_000, 3_600, now_ms),
        }
    }

    fn deadline(&self, w: &Watch) -> i64 {
        w.last_heard_ms.saturating_add(self.missed.saturating_mul(w.interval_ms))
    }

    /// Supervises `device` (bound to `elder`), last heard at `last_heard_ms`;
    /// an interval of 0 stops supervising it.
    pub fn watch(&self, device: DeviceId, elder: ElderId, interval_ms: i64, last_heard_ms: i64) {
        if interval_ms <= 0 {
            self.devices.remove(&device);
            return;
        }
        let (offline, report_again) = self.devices.get(&device).map_or((false, false), |w| (w.offline, w.report_again));
        let mut w = Watch { elder, interval_ms, last_heard_ms, offline, report_again, armed_ms: 0 };
        w.armed_ms = self.deadline(&w);
        let armed = w.armed_ms;
        self.devices.insert(device.clone(), w);
        self.wheel.schedule(armed, device);
    }

    pub fn unwatch(&self, device: &DeviceId) {
        self.devices.remove(device);
    }

    /// Records a heartbeat at `at_ms` (older than the last one changes nothing).
    pub fn heard(&self, device: &DeviceId, at_ms: i64) -> Heard {
        let Some(mut w) = self.devices.get_mut(device) else {
            return Heard::NotWatched;
        };
        w.last_heard_ms = w.last_heard_ms.max(at_ms);
        if !w.offline {
            return Heard::Online;
        }
        w.offline = false;
        w.report_again = false;
        w.armed_ms = self.deadline(&w);
        let armed = w.armed_ms;
        drop(w);
        self.wheel.schedule(armed, device.clone());
        Heard::BackOnline
    }

    /// Devices that fell silent by `now_ms`, each reported once.
    pub fn expire(&self, now_ms: i64) -> Vec<Offline> {
        let mut due = Vec::new();
        self.wheel.expire(now_ms, &mut due);
        let mut out = Vec::new();
        for (fired_at, device) in due {
            let Some(mut w) = self.devices.get_mut(&device) else { continue };
            if (w.offline && !w.report_again) || w.armed_ms != fired_at {
                continue; // stale entry: re-registered or already reported
            }
            let deadline = self.deadline(&w);
            if deadline > now_ms {
                w.armed_ms = deadline;
                drop(w);
                self.wheel.schedule(deadline, device);
                continue;
            }
            w.offline = true;
            w.report_again = false;
            out.push(Offline {
                device: device.clone(),
                elder: w.elder.clone(),
                last_heard_ms: w.last_heard_ms,
                interval_ms: w.interval_ms,
                silent_ms: now_ms - w.last_heard_ms,
            });
        }
        out
    }

    /// The alarm for an [`Offline`] report could not be raised (the journal
    /// failed): unless the device was heard from since, it is reported again
    /// by the first [`expire`](Self::expire) at or after `retry_at_ms`, with
    /// the same silence (so the same alarm key).
    pub fn report_failed(&self, report: &Offline, retry_at_ms: i64) {
        let Some(mut w) = self.devices.get_mut(&report.device) else { return };
        if !w.offline || w.last_heard_ms != report.last_heard_ms {
            return; // heard again, or re-registered: nothing to report
        }
        w.report_again = true;
        w.armed_ms = retry_at_ms;
        drop(w);
        self.wheel.schedule(retry_at_ms, report.device.clone());
    }

    /// Devices supervised / currently offline.
    pub fn counts(&self) -> (usize, usize) {
        let offline = self.devices.iter().filter(|w| w.offline).count();
        (self.devices.len(), offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse("device", s).unwrap()
    }

    #[test]
    fn three_missed_heartbeats_make_a_device_offline_once_until_heard_again() {
        let s = Supervisor::new(3, 0);
        let elder = ElderId::parse("elder", "E1").unwrap();
        s.watch(dev("d1"), elder.clone(), 60_000, 0);
        s.watch(dev("quiet"), elder, 0, 0); // not supervised
        assert!(s.expire(179_999).is_empty());
        assert_eq!(s.heard(&dev("d1"), 100_000), Heard::Online);
        assert!(s.expire(279_999).is_empty(), "the heartbeat moved the deadline");
        let off = s.expire(280_000);
        assert_eq!(off.len(), 1);
        assert_eq!((off[0].last_heard_ms, off[0].silent_ms), (100_000, 180_000));
        assert!(s.expire(10_000_000).is_empty(), "reported once");
        assert_eq!(s.counts(), (1, 1));
        assert_eq!(s.heard(&dev("d1"), 10_000_000), Heard::BackOnline);
        assert_eq!(s.heard(&dev("quiet"), 1), Heard::NotWatched);
        assert_eq!(s.expire(10_179_999), vec![]);
        assert_eq!(s.expire(10_180_000).len(), 1, "silent again: reported again");
    }

    #[test]
    fn a_report_whose_alarm_failed_is_made_again_until_heard() {
        let s = Supervisor::new(3, 0);
        let elder = ElderId::parse("elder", "E1").unwrap();
        s.watch(dev("d1"), elder.clone(), 1_000, 0);
        s.watch(dev("d2"), elder, 1_000, 0);
        let off = s.expire(3_000);
        assert_eq!(off.len(), 2);
        s.report_failed(&off[0], 8_000);
        assert!(s.expire(7_999).is_empty(), "not before the retry");
        assert_eq!(s.expire(8_000), vec![Offline { silent_ms: 8_000, ..off[0].clone() }], "the same silence again");
        assert!(s.expire(100_000).is_empty(), "reported once more, then quiet");
        // Heard between the failure and the retry: nothing to report.
        let again = Offline { silent_ms: 8_000, ..off[1].clone() };
        s.report_failed(&again, 9_000);
        assert_eq!(s.heard(&dev("d2"), 8_500), Heard::BackOnline);
        assert!(s.expire(9_000).is_empty());
        assert_eq!(s.counts(), (2, 1));
    }

    proptest! {
        /// Against a model on a simulated clock: a device is reported exactly
        /// when it has been silent for 3 intervals, once per silence.
        #[test]
        fn reports_match_a_model(
            intervals in proptest::collection::vec(1i64..120, 1..8),
            steps in proptest::collection::vec((0usize..8, 0i64..90, any::<bool>()), 1..200),
        ) {
            let s = Supervisor::new(3, 0);
            let elder = ElderId::parse("elder", "E").unwrap();
            let n = intervals.len();
            let mut last = vec![0i64; n];
            let mut offline = vec![false; n];
            for (i, iv) in intervals.iter().enumerate() {
                s.watch(dev(&format!("d{i}")), elder.clone(), iv * 1000, 0);
            }
            let mut now = 0i64;
            for (d, dt, beat) in steps {
                now += dt * 1000;
                if beat && d < n {
                    s.heard(&dev(&format!("d{d}")), now);
                    last[d] = now;
                    offline[d] = false;
                }
                let mut got: Vec<usize> =
                    s.expire(now).iter().map(|o| o.device.as_str()[1..].parse().unwrap()).collect();
                got.sort_unstable();
                let mut want = Vec::new();
                for i in 0..n {
                    if !offline[i] && now >= last[i] + 3 * intervals[i] * 1000 {
                        offline[i] = true;
                        want.push(i);
                    }
                }
                prop_assert_eq!(got, want);
            }
        }
    }
}
