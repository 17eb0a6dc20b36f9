//! Event-level scoring of a motion detector against ground-truth intervals: recall over real
//! motion, precision of detected events, and false events per hour of video.
//!
//! A real-motion interval is *found* when some detected event overlaps it (widened by the
//! tolerance on both sides, for detector latency and cooldown rounding). A detected event is
//! *true* when it overlaps some real-motion interval (same tolerance); every other detected
//! event is false, whether or not it overlaps a distractor (animal, light, weather). Distractor
//! intervals are kept for reporting which nuisance caused the false events.

use serde::Serialize;

/// A half-open time span in ms.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Interval {
    pub fn new(start_ms: i64, end_ms: i64) -> Interval {
        Interval {
            start_ms,
            end_ms: end_ms.max(start_ms),
        }
    }

    /// Whether the spans overlap once `self` is widened by `tolerance_ms` on both sides
    /// (an instant, `start == end`, overlaps a span that contains it).
    pub fn overlaps(&self, other: &Interval, tolerance_ms: i64) -> bool {
        self.start_ms - tolerance_ms <= other.end_ms && other.start_ms <= self.end_ms + tolerance_ms
    }
}

/// The scores of one run.
#[derive(Copy, Clone, Debug, Default, PartialEq, Serialize)]
pub struct Score {
    /// Real-motion intervals, and how many of them a detected event overlapped.
    pub real: usize,
    pub found: usize,
    /// Detected events, and how many of them overlapped real motion.
    pub detected: usize,
    pub true_events: usize,
    /// Detected events overlapping a distractor but no real motion.
    pub on_distractor: usize,
    /// Length of the scored video.
    pub duration_ms: i64,
}

impl Score {
    /// Found / real; `None` without real motion.
    pub fn recall(&self) -> Option<f64> {
        (self.real > 0).then(|| self.found as f64 / self.real as f64)
    }

    /// True / detected; `None` without detections.
    pub fn precision(&self) -> Option<f64> {
        (self.detected > 0).then(|| self.true_events as f64 / self.detected as f64)
    }

    pub fn false_events(&self) -> usize {
        self.detected - self.true_events
    }

    /// False events per hour of scored video.
    pub fn false_per_hour(&self) -> f64 {
        if self.duration_ms <= 0 {
            return 0.0;
        }
        self.false_events() as f64 * 3_600_000.0 / self.duration_ms as f64
    }

    /// Sum of two runs (counts and durations add).
    pub fn add(&self, o: &Score) -> Score {
        Score {
            real: self.real + o.real,
            found: self.found + o.found,
            detected: self.detected + o.detected,
            true_events: self.true_events + o.true_events,
            on_distractor: self.on_distractor + o.on_distractor,
            duration_ms: self.duration_ms + o.duration_ms,
        }
    }
}

/// Scores `detected` events against `real` and `distractor` intervals over `duration_ms`.
pub fn score(
    detected: &[Interval],
    real: &[Interval],
    distractors: &[Interval],
    tolerance_ms: i64,
    duration_ms: i64,
) -> Score {
    let found = real
        .iter()
        .filter(|r| detected.iter().any(|d| d.overlaps(r, tolerance_ms)))
        .count();
    let true_events = detected
        .iter()
        .filter(|d| real.iter().any(|r| d.overlaps(r, tolerance_ms)))
        .count();
    let on_distractor = detected
        .iter()
        .filter(|d| !real.iter().any(|r| d.overlaps(r, tolerance_ms)))
        .filter(|d| distractors.iter().any(|x| d.overlaps(x, tolerance_ms)))
        .count();
    Score {
        real: real.len(),
        found,
        detected: detected.len(),
        true_events,
        on_distractor,
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(a: i64, b: i64) -> Interval {
        Interval::new(a, b)
    }

    #[test]
    fn overlap_with_tolerance() {
        assert!(iv(0, 10).overlaps(&iv(10, 20), 0));
        assert!(!iv(0, 9).overlaps(&iv(10, 20), 0));
        assert!(iv(0, 9).overlaps(&iv(10, 20), 1));
        assert!(iv(25, 25).overlaps(&iv(10, 20), 5));
        assert!(!iv(26, 26).overlaps(&iv(10, 20), 5));
    }

    #[test]
    fn recall_precision_and_false_rate() {
        let real = [iv(1_000, 9_000), iv(20_000, 28_000), iv(40_000, 48_000)];
        let distractors = [iv(30_000, 35_000)];
        let detected = [
            iv(2_000, 10_000),
            iv(21_000, 22_000),
            iv(31_000, 32_000),
            iv(55_000, 56_000),
        ];
        let s = score(&detected, &real, &distractors, 500, 3_600_000);
        assert_eq!((s.real, s.found), (3, 2));
        assert_eq!((s.detected, s.true_events, s.on_distractor), (4, 2, 1));
        assert!((s.recall().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((s.precision().unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(s.false_events(), 2);
        assert!((s.false_per_hour() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn one_long_event_finds_every_interval_it_spans() {
        let real = [iv(0, 1_000), iv(5_000, 6_000)];
        let s = score(&[iv(500, 5_500)], &real, &[], 0, 60_000);
        assert_eq!((s.found, s.true_events, s.false_events()), (2, 1, 0));
    }

    #[test]
    fn empty_inputs() {
        let s = score(&[], &[], &[], 0, 0);
        assert_eq!(s.recall(), None);
        assert_eq!(s.precision(), None);
        assert_eq!(s.false_per_hour(), 0.0);
        let t = s.add(&score(&[iv(0, 1)], &[], &[], 0, 1_800_000));
        assert!((t.false_per_hour() - 2.0).abs() < 1e-9);
    }
}
