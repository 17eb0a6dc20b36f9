//! Decode timestamps for a session whose frames arrive in decode order with presentation times
//! only (RTP carries no dts).
//!
//! # Algorithm: simulate the decoder's reorder buffer
//!
//! A decoder that holds `D` decoded pictures before output emits, after decoding frame `i`, the
//! smallest pts it holds. Giving frame `i` that value as its dts yields exactly the delay-`D`
//! schedule ffmpeg and the encoders use:
//!
//! * every frame's own pts is in the buffer when its dts is taken, so `dts <= pts`: composition
//!   offsets are never negative for a well-formed stream;
//! * dts values are pts values, so when pts is monotonic (no B-frames) `D = 0` and dts == pts
//!   exactly, and with a constant frame rate every sample duration is one frame;
//! * it only looks backwards, so it runs across fragment and file boundaries unchanged.
//!
//! `D` is not signalled to us, so it is observed: the depth a frame needs is the number of
//! earlier frames (in decode order) with a larger pts, counted over a window of the last
//! [`MAX_REORDER_DEPTH`] frames. The whole fragment is known at `finish`, so the first fragment
//! gets its final `D` before any dts is chosen. The first `D` frames of a session have no buffered
//! pts to take: they get dts spaced one (estimated) frame duration apart ending just before the
//! first real value. If a later fragment needs a deeper buffer, its first frames likewise get
//! dts spread evenly between the previous fragment's end and the next real value.
//!
//! Safety rails keep the two invariants every player relies on, even for streams that break
//! the rules above (duplicate pts, jitter, a reorder window deeper than the cap):
//!
//! * each fragment starts exactly where the previous one's last sample ended (its duration was
//!   fixed when that fragment was emitted, from `next_pts` or by repeating the previous
//!   duration), so decode time is continuous across the session;
//! * dts is strictly increasing: a run of values that would not be is spread evenly up to the
//!   next value that leaves room (1 tick apart if none does). A frame whose dts ends up after
//!   its pts gets a negative composition offset, which `trun` version 1 can carry.
//!
//! Times stay the input pts except in two cases, where a constant shift is added to every later
//! time: B-frames whose first pts lies within the reorder delay of zero (decode times would be
//! negative, which `tfdt` cannot hold), and a pts that jumps backwards by more than
//! [`MAX_BACKWARD_JUMP`] (a camera clock reset; one decode timeline cannot go back).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Deepest reorder buffer we model. H.264 allows 16, but cameras that use B-frames at all use
/// one or two; a deeper apparent depth is more likely a timestamp glitch than real reordering.
pub(crate) const MAX_REORDER_DEPTH: usize = 8;

/// A pts further than this behind the latest one is a discontinuity, not reordering.
pub(crate) const MAX_BACKWARD_JUMP: i64 = 5 * 90_000;

/// Frame duration assumed when nothing better is known: 25 fps, the common camera default.
pub(crate) const DEFAULT_DURATION: i64 = 90_000 / 25;

/// Decode-side times of one sample.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    pub dts: i64,
    /// Presentation time on the output timeline: the input pts plus any shift.
    pub pts: i64,
    pub duration: i64,
}

#[derive(Debug, Default)]
pub(crate) struct DtsDeriver {
    /// Observed reorder depth `D`; only ever grows, since shrinking would need two dts for one
    /// frame.
    depth: usize,
    /// The simulated reorder buffer: pts seen but not yet handed out as a dts.
    pending: BinaryHeap<Reverse<i64>>,
    /// The last `MAX_REORDER_DEPTH` pts in decode order, to measure how far frames move.
    recent: VecDeque<i64>,
    /// Added to input pts; see the module notes.
    shift: i64,
    /// Largest output pts so far.
    max_pts: Option<i64>,
    last_dts: Option<i64>,
    /// Where the next fragment must start: the end of the last emitted sample.
    next_dts: Option<i64>,
    last_duration: Option<i64>,
}

impl DtsDeriver {
    /// The last emitted sample's duration, if any was emitted.
    pub fn last_duration(&self) -> Option<i64> {
        self.last_duration
    }

    /// Input pts onto the output timeline, recognising a backwards jump as a discontinuity.
    fn map(&self, pts: i64) -> (i64, i64) {
        let p = pts.saturating_add(self.shift);
        match self.max_pts {
            Some(max) if p < max.saturating_sub(MAX_BACKWARD_JUMP) => {
                let resumed = max + self.last_duration.unwrap_or(DEFAULT_DURATION);
                (resumed, self.shift + (resumed - p))
            }
            _ => (p, self.shift),
        }
    }

    /// Assigns times to one fragment's frames, given their pts in decode order. `next_pts` is
    /// the pts of the frame that will follow, if known, so the last duration is exact.
    pub fn assign(&mut self, input_pts: &[i64], next_pts: Option<i64>) -> Vec<Timing> {
        if input_pts.is_empty() {
            return Vec::new();
        }
        let mut pts = Vec::with_capacity(input_pts.len());
        for &p in input_pts {
            let (p, shift) = self.map(p);
            self.shift = shift;
            self.max_pts = Some(self.max_pts.map_or(p, |m| m.max(p)));
            pts.push(p);
        }

        // How deep a buffer does this fragment need?
        for &p in &pts {
            let later_shown_earlier = self.recent.iter().filter(|&&q| q > p).count();
            self.depth = self.depth.max(later_shown_earlier);
            if self.recent.len() == MAX_REORDER_DEPTH {
                self.recent.pop_front();
            }
            self.recent.push_back(p);
        }

        // Run the buffer. Frames decoded while it is still filling (session start, or the
        // depth just grew) get no value from it: `None`, invented below.
        let mut from_buffer: Vec<Option<i64>> = Vec::with_capacity(pts.len());
        for &p in &pts {
            self.pending.push(Reverse(p));
            from_buffer.push(if self.pending.len() > self.depth {
                self.pending.pop().map(|Reverse(v)| v)
            } else {
                None
            });
        }

        let step = estimate_duration(&pts);
        let (unfilled, ceiling) = self.unfilled(&from_buffer, pts[0]);
        let lowest = ceiling.saturating_sub(step.saturating_mul(unfilled as i64));
        if self.next_dts.is_none() && lowest < 0 {
            // B-frames with pts near zero: move the whole timeline up rather than write
            // negative decode times.
            self.shift_all(-lowest, &mut pts, &mut from_buffer);
        }
        let (unfilled, ceiling) = self.unfilled(&from_buffer, pts[0]);

        let mut dts: Vec<i64> = from_buffer.iter().map(|d| d.unwrap_or(i64::MIN)).collect();
        match self.next_dts {
            // Continuity beats the buffer's opinion: the previous fragment already promised
            // where this one starts. Frames the buffer gave nothing are spread after it by
            // `finish_timing`.
            Some(start) => dts[0] = start,
            // Session start: one frame apart, ending a frame before the first real value.
            None => {
                for (j, d) in dts[..unfilled].iter_mut().enumerate() {
                    *d = ceiling - step * (unfilled - j) as i64;
                }
            }
        }
        self.finish_timing(pts, dts, next_pts)
    }

    /// How many leading frames the buffer gave no dts, and the value their dts must stay
    /// below: the buffer's next output is at least its current minimum.
    fn unfilled(&self, from_buffer: &[Option<i64>], fallback: i64) -> (usize, i64) {
        let unfilled = from_buffer.iter().take_while(|d| d.is_none()).count();
        let ceiling = from_buffer
            .get(unfilled)
            .copied()
            .flatten()
            .or_else(|| self.pending.peek().map(|&Reverse(v)| v))
            .unwrap_or(fallback);
        (unfilled, ceiling)
    }

    fn shift_all(&mut self, up: i64, pts: &mut [i64], from_buffer: &mut [Option<i64>]) {
        self.shift += up;
        self.max_pts = self.max_pts.map(|m| m + up);
        for p in pts.iter_mut() {
            *p += up;
        }
        for d in from_buffer.iter_mut().flatten() {
            *d += up;
        }
        for q in self.recent.iter_mut() {
            *q += up;
        }
        self.pending = self
            .pending
            .drain()
            .map(|Reverse(v)| Reverse(v + up))
            .collect();
    }

    /// Enforces strictly increasing dts, fixes durations, and records where the next fragment
    /// starts.
    fn finish_timing(
        &mut self,
        pts: Vec<i64>,
        mut dts: Vec<i64>,
        next_pts: Option<i64>,
    ) -> Vec<Timing> {
        make_increasing(&mut dts, self.last_dts);
        let n = dts.len();
        let last = dts[n - 1];
        let repeated = if n >= 2 {
            dts[n - 1] - dts[n - 2]
        } else {
            self.last_duration.unwrap_or(DEFAULT_DURATION)
        };
        // What the buffer will hand out once the next frame is decoded, unless it is still
        // filling (then the next fragment invents that value and any guess will do).
        let predicted = next_pts
            .map(|next| self.map(next).0)
            .filter(|_| self.pending.len() + 1 > self.depth)
            .map(|next| self.pending.peek().map_or(next, |&Reverse(m)| m.min(next)));
        let last_duration = match predicted {
            Some(p) if p > last => p - last,
            _ => repeated,
        };
        self.last_dts = Some(last);
        self.last_duration = Some(last_duration);
        self.next_dts = Some(last + last_duration);
        (0..n)
            .map(|i| Timing {
                dts: dts[i],
                pts: pts[i],
                duration: if i + 1 < n {
                    dts[i + 1] - dts[i]
                } else {
                    last_duration
                },
            })
            .collect()
    }
}

/// Makes `dts` strictly increasing (and above `prev`). A run of values that are not gets spread
/// evenly between the last good value and the first later value that leaves room, so the
/// repair costs short samples rather than 1-tick ones; with no such value the run continues
/// 1 tick apart.
fn make_increasing(dts: &mut [i64], mut prev: Option<i64>) {
    let mut i = 0;
    while i < dts.len() {
        let Some(p) = prev.filter(|&p| dts[i] <= p) else {
            prev = Some(dts[i]);
            i += 1;
            continue;
        };
        let mut j = i;
        while j < dts.len() && dts[j].saturating_sub(p) <= (j - i) as i64 {
            j += 1;
        }
        let run = (j - i) as i128;
        for k in i..j {
            let nth = (k - i + 1) as i128;
            dts[k] = match dts.get(j) {
                Some(&anchor) => {
                    (i128::from(p) + (i128::from(anchor) - i128::from(p)) * nth / (run + 1)) as i64
                }
                None => p + nth as i64,
            };
        }
        prev = Some(dts[j - 1]);
        i = j;
    }
}

/// Average frame spacing of a fragment, for frames that have no neighbour to measure against.
fn estimate_duration(pts: &[i64]) -> i64 {
    let (Some(min), Some(max)) = (pts.iter().min(), pts.iter().max()) else {
        return DEFAULT_DURATION;
    };
    if pts.len() < 2 || max <= min {
        return DEFAULT_DURATION;
    }
    ((max - min) / (pts.len() as i64 - 1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{Gop, Lcg, decode_order, reorder_depth, split_at_keys};
    use super::*;

    const FRAME: i64 = 3_600;

    /// Runs a session through the deriver, one fragment per range, and checks the invariants
    /// every output must have whatever the input: strictly increasing dts, each fragment
    /// starting where the previous one ended, durations matching dts steps, and presentation
    /// times equal to the input plus one constant shift. Returns all timings and the shift.
    fn run(
        pts: &[i64],
        fragments: &[std::ops::Range<usize>],
        with_next: bool,
    ) -> (Vec<Timing>, i64) {
        let mut d = DtsDeriver::default();
        let mut all: Vec<Timing> = Vec::new();
        for r in fragments {
            let next = if with_next {
                pts.get(r.end).copied()
            } else {
                None
            };
            let out = d.assign(&pts[r.clone()], next);
            assert_eq!(out.len(), r.len());
            if let Some(prev) = all.last() {
                assert_eq!(
                    out[0].dts,
                    prev.dts + prev.duration,
                    "fragment at frame {} does not continue the previous one",
                    r.start
                );
            }
            for w in out.windows(2) {
                assert_eq!(w[0].duration, w[1].dts - w[0].dts);
            }
            all.extend(out);
        }
        for (i, w) in all.windows(2).enumerate() {
            assert!(
                w[1].dts > w[0].dts,
                "dts not increasing at frame {}: {w:?}",
                i + 1
            );
        }
        assert!(all.iter().all(|t| t.duration > 0));
        assert!(all[0].dts >= 0, "negative decode time {}", all[0].dts);
        let shift = all[0].pts - pts[0];
        for (t, &p) in all.iter().zip(pts) {
            assert_eq!(t.pts, p + shift, "presentation time not preserved");
        }
        (all, shift)
    }

    #[test]
    fn without_b_frames_dts_equals_pts() {
        let mut rng = Lcg::new(7);
        for trial in 0..50 {
            // Jittery camera clock: 30..46 ms steps from an arbitrary RTP-like origin.
            let mut pts = vec![rng.range(0, 1 << 32) as i64];
            for _ in 1..rng.range(1, 120) {
                let last = *pts.last().expect("non-empty");
                pts.push(last + rng.range(2_700, 4_200) as i64);
            }
            let mut cuts = vec![0];
            while *cuts.last().expect("non-empty") < pts.len() {
                let next = cuts.last().expect("non-empty") + rng.range(1, 30) as usize;
                cuts.push(next.min(pts.len()));
            }
            let frags: Vec<_> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
            let (out, shift) = run(&pts, &frags, true);
            assert_eq!(shift, 0, "trial {trial}");
            for (i, (t, &p)) in out.iter().zip(&pts).enumerate() {
                assert_eq!(t.dts, p, "trial {trial} frame {i}");
                if let Some(&next) = pts.get(i + 1) {
                    assert_eq!(t.duration, next - p, "trial {trial} frame {i}");
                }
            }
            // No next frame: the last duration repeats the one before it.
            let n = out.len();
            if n >= 2 {
                assert_eq!(out[n - 1].duration, out[n - 2].duration);
            } else {
                assert_eq!(out[0].duration, DEFAULT_DURATION);
            }
        }
    }

    #[test]
    fn b_frames_get_non_negative_offsets_and_one_frame_durations() {
        for bframes in 0..=3 {
            for pyramid in [false, true] {
                for length in [1, 2, 5, 12, 25] {
                    let gop = Gop {
                        frames: 77,
                        length,
                        bframes,
                        pyramid,
                    };
                    let order = decode_order(gop);
                    let base = 1_000_000 * FRAME;
                    let pts: Vec<i64> = order
                        .iter()
                        .map(|(p, _)| base + *p as i64 * FRAME)
                        .collect();
                    let frags = split_at_keys(&order);
                    for with_next in [true, false] {
                        let (out, shift) = run(&pts, &frags, with_next);
                        let ctx = format!("{gop:?} next={with_next}");
                        assert_eq!(shift, 0, "{ctx}");
                        for t in &out {
                            assert!(t.pts >= t.dts, "{ctx}: negative offset {t:?}");
                        }
                        // Constant frame rate in, constant sample duration out (with next_pts
                        // known, or when the repeated guess happens to be right).
                        if with_next {
                            assert!(out.iter().all(|t| t.duration == FRAME), "{ctx}: {out:?}");
                        }
                        // The decoder-side delay is the stream's reorder depth, no more.
                        let depth = reorder_depth(&order) as i64;
                        assert_eq!(out[0].dts, base - depth * FRAME, "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn b_frames_from_pts_zero_shift_the_timeline_up() {
        let order = decode_order(Gop {
            frames: 30,
            length: 10,
            bframes: 2,
            pyramid: true,
        });
        let pts: Vec<i64> = order.iter().map(|(p, _)| *p as i64 * FRAME).collect();
        let (out, shift) = run(&pts, &split_at_keys(&order), true);
        assert_eq!(out[0].dts, 0);
        assert_eq!(shift, reorder_depth(&order) as i64 * FRAME);
        assert!(out.iter().all(|t| t.pts >= t.dts));
    }

    #[test]
    fn negative_pts_are_shifted_to_zero() {
        let pts: Vec<i64> = (0..10).map(|i| -5 * FRAME + i * FRAME).collect();
        let (out, shift) = run(&pts, &[0..4, 4..10], true);
        assert_eq!(shift, 5 * FRAME);
        assert_eq!(out[0].dts, 0);
        assert!(out.iter().all(|t| t.pts == t.dts));
    }

    #[test]
    fn reorder_that_starts_mid_session_stays_ordered() {
        // Two GOPs without B-frames, then the camera switches B-frames on.
        let mut order = decode_order(Gop {
            frames: 20,
            length: 10,
            bframes: 0,
            pyramid: false,
        });
        let tail = decode_order(Gop {
            frames: 30,
            length: 10,
            bframes: 3,
            pyramid: true,
        });
        order.extend(tail.iter().map(|(p, k)| (p + 20, *k)));
        let pts: Vec<i64> = order
            .iter()
            .map(|(p, _)| 90_000 + *p as i64 * FRAME)
            .collect();
        let (out, _) = run(&pts, &split_at_keys(&order), true);
        assert!(out.iter().all(|t| t.pts >= t.dts), "{out:?}");
        // Before the switch nothing changes.
        assert!(out[..20].iter().all(|t| t.pts == t.dts));
    }

    #[test]
    fn hostile_timestamps_keep_the_invariants() {
        let mut rng = Lcg::new(99);
        for trial in 0..300 {
            let n = rng.range(1, 80) as usize;
            let mut p = rng.range(0, 10_000_000) as i64;
            let mut pts = Vec::with_capacity(n);
            for _ in 0..n {
                pts.push(p);
                p += match rng.range(0, 9) {
                    0 => 0,                                     // duplicate
                    1 => -(rng.range(1, 5) as i64) * FRAME,     // reordered
                    2 => -(rng.range(200, 400) as i64) * FRAME, // clock reset
                    3 => rng.range(1, 100) as i64 * FRAME,      // gap
                    _ => rng.range(1, 2 * FRAME as u64) as i64,
                };
            }
            let mut cuts = vec![0];
            while *cuts.last().expect("non-empty") < n {
                let next = cuts.last().expect("non-empty") + rng.range(1, 12) as usize;
                cuts.push(next.min(n));
            }
            let frags: Vec<_> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
            let with_next = trial % 2 == 0;
            // `run` asserts the invariants, except that presentation times may move by more
            // than one shift after a clock reset, so check only decode-side ones here.
            let mut d = DtsDeriver::default();
            let mut all: Vec<Timing> = Vec::new();
            for r in &frags {
                let next = if with_next {
                    pts.get(r.end).copied()
                } else {
                    None
                };
                let out = d.assign(&pts[r.clone()], next);
                if let Some(prev) = all.last() {
                    assert_eq!(out[0].dts, prev.dts + prev.duration, "trial {trial}");
                }
                all.extend(out);
            }
            assert!(all[0].dts >= 0, "trial {trial}");
            for w in all.windows(2) {
                assert!(w[1].dts > w[0].dts, "trial {trial}: {w:?}");
                assert_eq!(w[0].duration, w[1].dts - w[0].dts, "trial {trial}");
            }
        }
    }

    #[test]
    fn make_increasing_spreads_runs_over_the_available_room() {
        let mut v = vec![100, 100, 100, 400];
        make_increasing(&mut v, None);
        assert_eq!(v, [100, 200, 300, 400]);
        let mut v = vec![50, 60, 500];
        make_increasing(&mut v, Some(100));
        assert_eq!(v, [233, 366, 500]);
        let mut v = vec![5, 5];
        make_increasing(&mut v, Some(10));
        assert_eq!(v, [11, 12]);
    }
}
