//! The evaluation baseline: Frigate's "improved" motion detector (`ImprovedMotionDetector`,
//! MIT licence, blakeblackshear/frigate `frigate/motion/improved_motion.py`), re-implemented
//! from its documented algorithm with its default settings, plus the event wrapper used to
//! compare it with [`crate::detector`].
//!
//! Per frame: nearest-neighbour resize of the Y plane to `frame_height` rows; contrast stretch
//! to the mean of the last 50 (4th, 96th) percentile pairs; masked pixels set to 0; 3×3
//! Gaussian blur (σ 1); absolute difference to the running-average background (rounded to
//! `u8`); binary threshold; one 3×3 dilation; external contours, each with an area over
//! `contour_area` becoming a box. If the contours cover more than `lightning_threshold` of
//! the picture the detector is "calibrating" (background alpha 0.2 instead of `frame_alpha`)
//! until they cover under 5 % with at most 4 boxes. The frame is blended into the background
//! every frame without motion, and with motion only once motion has lasted 10 frames. The
//! background starts black and calibrating, as Frigate's does.
//!
//! Two approximations, both small: contour areas come from Pick's theorem on the blob's pixels
//! (`area ≈ pixels − boundary/2 − 1`, which is what `cv2.contourArea` gives for a hole-free
//! blob traced through pixel centres), and blobs are 8-connected components of the dilated
//! mask (what `RETR_EXTERNAL` outlines, holes ignored).
//!
//! Events ([`FrigateEvents`]): Frigate reports a camera's motion as on whenever a frame has
//! motion boxes (calibrating or not: `frigate/<camera>/motion` is driven by the box count), and
//! off after a delay without any. The same is done here, with the delay set to the cooldown of
//! the detector it is compared with, so both are scored on the same event semantics.

use crate::detector::Phase;

/// The detector's settings, Frigate's defaults in [`Default`].
#[derive(Clone, Debug, PartialEq)]
pub struct FrigateConfig {
    pub frame_height: usize,
    pub improve_contrast: bool,
    pub threshold: u8,
    pub contour_area: f32,
    pub frame_alpha: f32,
    pub lightning_threshold: f32,
    /// Normalised polygons whose pixels are set to 0 before the difference.
    pub masks: Vec<Vec<[f64; 2]>>,
}

impl Default for FrigateConfig {
    fn default() -> Self {
        FrigateConfig {
            frame_height: 100,
            improve_contrast: true,
            threshold: 30,
            contour_area: 10.0,
            frame_alpha: 0.01,
            lightning_threshold: 0.8,
            masks: Vec::new(),
        }
    }
}

/// Frames of (min, max) percentile history the contrast stretch averages over.
const CONTRAST_HISTORY: usize = 50;

/// One camera's Frigate-style motion detector.
#[derive(Debug)]
pub struct FrigateDetector {
    cfg: FrigateConfig,
    width: usize,
    height: usize,
    sw: usize,
    sh: usize,
    col_src: Vec<usize>,
    row_src: Vec<usize>,
    mask: Vec<bool>,
    small: Vec<u8>,
    tmp: Vec<f32>,
    blurred: Vec<u8>,
    avg: Vec<f32>,
    thresh: Vec<u8>,
    dilated: Vec<u8>,
    contrast: Vec<(f32, f32)>,
    contrast_index: usize,
    calibrating: bool,
    motion_frames: u32,
    stack: Vec<u32>,
}

impl FrigateDetector {
    pub fn new(cfg: FrigateConfig, width: u32, height: u32) -> FrigateDetector {
        let (width, height) = (width.max(1) as usize, height.max(1) as usize);
        let sh = cfg.frame_height.max(1);
        let sw = (sh * width / height).max(1);
        // cv2.resize INTER_NEAREST: source index floor(dst * src / dst_size).
        let col_src = (0..sw).map(|x| (x * width / sw).min(width - 1)).collect();
        let row_src = (0..sh).map(|y| (y * height / sh).min(height - 1)).collect();
        let mut mask = vec![false; sw * sh];
        for y in 0..sh {
            for x in 0..sw {
                let p = [(x as f64 + 0.5) / sw as f64, (y as f64 + 0.5) / sh as f64];
                mask[y * sw + x] = cfg.masks.iter().any(|m| inside(m, p));
            }
        }
        let n = sw * sh;
        FrigateDetector {
            cfg,
            width,
            height,
            sw,
            sh,
            col_src,
            row_src,
            mask,
            small: vec![0; n],
            tmp: vec![0.0; n],
            blurred: vec![0; n],
            avg: vec![0.0; n],
            thresh: vec![0; n],
            dilated: vec![0; n],
            contrast: vec![(0.0, 255.0); CONTRAST_HISTORY],
            contrast_index: 0,
            calibrating: true,
            motion_frames: 0,
            stack: Vec::new(),
        }
    }

    pub fn is_calibrating(&self) -> bool {
        self.calibrating
    }

    /// Motion boxes of one frame (x, y, w, h normalised). `t_ms` is accepted for symmetry
    /// with [`crate::detector::Detector::analyse`]; Frigate's detector counts frames, not time.
    pub fn analyse(&mut self, y: &[u8], stride: usize, _t_ms: i64) -> Vec<[f32; 4]> {
        if stride < self.width || y.len() < stride * (self.height - 1) + self.width {
            return Vec::new();
        }
        let (sw, sh) = (self.sw, self.sh);
        for (sy, &row) in self.row_src.iter().enumerate() {
            let src = &y[row * stride..];
            for (sx, &col) in self.col_src.iter().enumerate() {
                self.small[sy * sw + sx] = src[col];
            }
        }
        if self.cfg.improve_contrast {
            self.stretch();
        }
        for (p, &m) in self.small.iter_mut().zip(&self.mask) {
            if m {
                *p = 0;
            }
        }
        self.blur();
        for i in 0..sw * sh {
            let bg = self.avg[i].round().clamp(0.0, 255.0) as u8;
            self.thresh[i] = u8::from(self.blurred[i].abs_diff(bg) > self.cfg.threshold);
        }
        dilate(&self.thresh, &mut self.dilated, sw, sh);
        let (boxes, total_area) = self.contours();
        let pct = total_area / (sw * sh) as f32;
        if pct < 0.05 && boxes.len() <= 4 {
            self.calibrating = false;
        }
        if self.calibrating || pct > self.cfg.lightning_threshold {
            self.calibrating = true;
        }
        let alpha = if self.calibrating {
            0.2
        } else {
            self.cfg.frame_alpha
        };
        let blend = if boxes.is_empty() {
            self.motion_frames = 0;
            true
        } else {
            self.motion_frames += 1;
            self.motion_frames >= 10
        };
        if blend {
            for (a, &b) in self.avg.iter_mut().zip(&self.blurred) {
                *a = (1.0 - alpha) * *a + alpha * f32::from(b);
            }
        }
        boxes
    }

    /// Clip and stretch to the running mean of the 4th / 96th percentiles.
    fn stretch(&mut self) {
        let mut hist = [0u32; 256];
        for &p in &self.small {
            hist[p as usize] += 1;
        }
        let lo = percentile(&hist, self.small.len(), 4.0).floor();
        let hi = percentile(&hist, self.small.len(), 96.0).floor();
        if lo >= hi {
            return;
        }
        self.contrast[self.contrast_index] = (lo, hi);
        self.contrast_index = (self.contrast_index + 1) % CONTRAST_HISTORY;
        let n = CONTRAST_HISTORY as f32;
        let min = self.contrast.iter().map(|c| c.0).sum::<f32>() / n;
        let max = self.contrast.iter().map(|c| c.1).sum::<f32>() / n;
        if max <= min {
            return;
        }
        let k = 255.0 / (max - min);
        for p in &mut self.small {
            let v = f32::from(*p).clamp(min, max);
            *p = ((v - min) * k) as u8;
        }
    }

    /// Separable Gaussian, σ 1, radius 1, edges reflected (scipy's default mode).
    fn blur(&mut self) {
        const W0: f32 = 0.451_862_3;
        const W1: f32 = 0.274_068_6;
        let (sw, sh) = (self.sw, self.sh);
        for y in 0..sh {
            let row = &self.small[y * sw..(y + 1) * sw];
            for x in 0..sw {
                let l = row[x.saturating_sub(1)];
                let r = row[(x + 1).min(sw - 1)];
                self.tmp[y * sw + x] = W0 * f32::from(row[x]) + W1 * (f32::from(l) + f32::from(r));
            }
        }
        for y in 0..sh {
            let (u, d) = (y.saturating_sub(1), (y + 1).min(sh - 1));
            for x in 0..sw {
                let v =
                    W0 * self.tmp[y * sw + x] + W1 * (self.tmp[u * sw + x] + self.tmp[d * sw + x]);
                self.blurred[y * sw + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    /// Boxes of blobs whose contour area exceeds `contour_area`, and the summed contour area.
    fn contours(&mut self) -> (Vec<[f32; 4]>, f32) {
        let (sw, sh) = (self.sw, self.sh);
        let mut seen = vec![false; sw * sh];
        let mut boxes = Vec::new();
        let mut total = 0.0;
        for start in 0..sw * sh {
            if self.dilated[start] == 0 || seen[start] {
                continue;
            }
            seen[start] = true;
            self.stack.clear();
            self.stack.push(start as u32);
            let (mut count, mut boundary) = (0u32, 0u32);
            let mut bbox = [usize::MAX, usize::MAX, 0, 0];
            while let Some(p) = self.stack.pop() {
                let (x, y) = (p as usize % sw, p as usize / sw);
                count += 1;
                bbox = [
                    bbox[0].min(x),
                    bbox[1].min(y),
                    bbox[2].max(x),
                    bbox[3].max(y),
                ];
                let mut edge = x == 0 || y == 0 || x + 1 == sw || y + 1 == sh;
                for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1)] {
                    let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= sw as i64 || ny >= sh as i64 {
                        continue;
                    }
                    if self.dilated[ny as usize * sw + nx as usize] == 0 {
                        edge = true;
                    }
                }
                boundary += u32::from(edge);
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if nx < 0 || ny < 0 || nx >= sw as i64 || ny >= sh as i64 {
                            continue;
                        }
                        let q = ny as usize * sw + nx as usize;
                        if self.dilated[q] != 0 && !seen[q] {
                            seen[q] = true;
                            self.stack.push(q as u32);
                        }
                    }
                }
            }
            let area = (count as f32 - boundary as f32 / 2.0 - 1.0).max(0.0);
            total += area;
            if area > self.cfg.contour_area {
                boxes.push([
                    bbox[0] as f32 / sw as f32,
                    bbox[1] as f32 / sh as f32,
                    (bbox[2] - bbox[0] + 1) as f32 / sw as f32,
                    (bbox[3] - bbox[1] + 1) as f32 / sh as f32,
                ]);
            }
        }
        (boxes, total)
    }
}

/// numpy's default (linear) percentile from a histogram of `n` values.
fn percentile(hist: &[u32; 256], n: usize, q: f32) -> f32 {
    if n == 0 {
        return 0.0;
    }
    let pos = q / 100.0 * (n - 1) as f32;
    let (k, frac) = (pos.floor() as usize, pos - pos.floor());
    let nth = |k: usize| {
        let mut seen = 0usize;
        for (v, &c) in hist.iter().enumerate() {
            seen += c as usize;
            if seen > k {
                return v as f32;
            }
        }
        255.0
    };
    let a = nth(k);
    if frac == 0.0 {
        a
    } else {
        a + (nth((k + 1).min(n - 1)) - a) * frac
    }
}

fn dilate(src: &[u8], dst: &mut [u8], sw: usize, sh: usize) {
    for y in 0..sh {
        for x in 0..sw {
            let mut v = 0;
            for yy in y.saturating_sub(1)..=(y + 1).min(sh - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(sw - 1) {
                    v |= src[yy * sw + xx];
                }
            }
            dst[y * sw + x] = v;
        }
    }
}

fn inside(poly: &[[f64; 2]], p: [f64; 2]) -> bool {
    let n = poly.len();
    if n < 3 {
        return false;
    }
    let mut inside = false;
    let mut j = n - 1;
    for i in 0..n {
        let (a, b) = (poly[i], poly[j]);
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]);
            if p[0] < x {
                inside = !inside;
            }
        }
        j = i;
    }
    inside
}

/// A finished or running motion event of the baseline.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrigateEvent {
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub phase: Phase,
}

/// Frigate's camera motion on/off: on at the first frame with boxes, off once no frame has
/// had boxes for `cooldown_ms` (the event ends at the last frame with motion).
#[derive(Debug)]
pub struct FrigateEvents {
    cooldown_ms: i64,
    start_ms: Option<i64>,
    last_motion_ms: i64,
}

impl FrigateEvents {
    pub fn new(cooldown_ms: i64) -> FrigateEvents {
        FrigateEvents {
            cooldown_ms,
            start_ms: None,
            last_motion_ms: 0,
        }
    }

    pub fn active(&self) -> bool {
        self.start_ms.is_some()
    }

    /// Feeds one frame's box count; returns a `Start` or `End` when the state flips.
    pub fn step(&mut self, has_motion: bool, t_ms: i64) -> Option<FrigateEvent> {
        match self.start_ms {
            None if has_motion => {
                self.start_ms = Some(t_ms);
                self.last_motion_ms = t_ms;
                Some(FrigateEvent {
                    start_ms: t_ms,
                    end_ms: None,
                    phase: Phase::Start,
                })
            }
            None => None,
            Some(_) if has_motion => {
                self.last_motion_ms = t_ms;
                None
            }
            Some(start) if t_ms - self.last_motion_ms >= self.cooldown_ms => {
                self.start_ms = None;
                Some(FrigateEvent {
                    start_ms: start,
                    end_ms: Some(self.last_motion_ms),
                    phase: Phase::End,
                })
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(w: usize, h: usize, f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect()
    }

    #[test]
    fn percentile_matches_numpy_linear() {
        let mut hist = [0u32; 256];
        for v in [10u8, 20, 30, 40, 50] {
            hist[v as usize] += 1;
        }
        assert_eq!(percentile(&hist, 5, 50.0), 30.0);
        assert!((percentile(&hist, 5, 4.0) - 11.6).abs() < 1e-4);
        assert!((percentile(&hist, 5, 96.0) - 48.4).abs() < 1e-4);
    }

    #[test]
    fn calibrates_then_sees_a_moving_block() {
        let (w, h) = (320, 180);
        let mut d = FrigateDetector::new(FrigateConfig::default(), w as u32, h as u32);
        let bg = plane(w, h, |x, y| (60 + (x * 7 + y * 3) % 90) as u8);
        // The contrast history (50 frames) and the background (alpha 0.01) take a while.
        for i in 0..600 {
            d.analyse(&bg, w, i * 200);
        }
        assert!(!d.is_calibrating());
        assert!(d.analyse(&bg, w, 600 * 200).is_empty());
        let mut with = bg.clone();
        for y in 80..120 {
            for x in 100..130 {
                with[y * w + x] = 250;
            }
        }
        let boxes = d.analyse(&with, w, 601 * 200);
        assert_eq!(boxes.len(), 1);
        let b = boxes[0];
        assert!((b[0] - 100.0 / 320.0).abs() < 0.03 && (b[1] - 80.0 / 180.0).abs() < 0.03);
    }

    #[test]
    fn events_end_after_cooldown() {
        let mut e = FrigateEvents::new(1000);
        assert_eq!(e.step(false, 0), None);
        assert_eq!(e.step(true, 200).unwrap().phase, Phase::Start);
        assert_eq!(e.step(false, 400), None);
        assert_eq!(e.step(true, 600), None);
        assert_eq!(e.step(false, 1400), None);
        let end = e.step(false, 1600).unwrap();
        assert_eq!(
            (end.start_ms, end.end_ms, end.phase),
            (200, Some(600), Phase::End)
        );
        assert!(!e.active());
    }
}
