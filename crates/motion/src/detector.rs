//! The motion detector core: a pure, clock-free analysis of a luma plane into per-zone motion
//! events (no I/O, time comes in with every frame).
//!
//! Per analysed frame:
//! 1. **Downscale** the Y plane by integer block averaging to about [`TARGET_WIDTH`] columns in
//!    one pass (rows summed into a `u16` accumulator, then folded per block; large blocks
//!    read `max_rows_per_block` evenly spaced rows, since memory bandwidth is the cost).
//!    Averaging `n` pixels divides sensor noise by `√n`, which nearest-neighbour decimation
//!    does not.
//! 2. **Illumination compensation**: a grid of regions, each fitting `cur ≈ a·bg + b` robustly
//!    (previous foreground excluded, outliers trimmed, slope pulled towards 1 on flat regions).
//!    The fitted gain/offset is interpolated bilinearly between region centres and folded
//!    into the background, so lighting steps, cloud shadows and auto-exposure are tracked
//!    rather than detected. When most regions change at once (a light switched, the IR cut
//!    filter flipping between day and night) the background is rebased on the new picture
//!    and new motion is held off briefly.
//! 3. **Foreground test** per pixel against the 3×3 neighbourhood range of the background
//!    (so a sub-pixel camera sway is not motion), with a threshold from the per-region noise
//!    (robust residual of the fit) and a per-pixel running deviation (a Σ-Δ-like noise model
//!    that learns swaying trees), scaled by zone sensitivity.
//! 4. **Despeckle** (isolated pixels dropped), **connected components** (pixels up to
//!    `JOIN` apart joined, so a small figure that falls apart into head and legs stays one
//!    blob), a minimum area, and a **structure test**: the difference to the background must have
//!    edges and texture (high-frequency energy), which a soft light pool or shadow lacks.
//! 5. **Persistence**: blobs are associated with tracks (gate grows with the time between
//!    frames); a track is confirmed when it was seen in `persist_k` of the last `persist_n`
//!    analysed frames. A blob of at least `CONTINUE_AREA` of the minimum area continues a
//!    track but never starts one.
//! 6. **State machine** per zone: idle → candidate (an unconfirmed track) → active (a
//!    confirmed track; `Start`) → cooldown (no motion) → idle after `cooldown_ms` (`End`).
//!
//! Everything adapts in time constants (ms), and persistence counts analysed frames, so the
//! detector works both at 5 fps and on key frames only (the shell is told to go to full rate
//! as soon as a candidate shows, via [`Detector::wants_full_rate`]).

use serde::{Deserialize, Serialize};

/// Width the Y plane is reduced to (the block size is `width / TARGET_WIDTH`, at least 1).
pub const TARGET_WIDTH: u32 = 128;

/// A named polygon in normalised coordinates (0..1) with its own sensitivity (0..1, 0.5 is
/// the default tuning; higher finds smaller and fainter motion).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Zone {
    pub name: String,
    pub polygon: Vec<[f64; 2]>,
    pub sensitivity: f64,
}

/// Detector configuration; with no zones the whole frame is watched as zone "all".
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorConfig {
    pub zones: Vec<Zone>,
    /// Polygons (normalised) never analysed.
    pub masks: Vec<Vec<[f64; 2]>>,
    /// Rows read per block when downscaling (evenly spaced; all rows when the block is
    /// smaller): bounds the memory read from large planes.
    pub max_rows_per_block: usize,
    /// Time without motion after which an active zone ends its event.
    pub cooldown_ms: i64,
    /// Smallest difference (luma levels, after downscaling) that can count as motion.
    pub min_threshold: f32,
    /// Threshold in units of the region's noise sigma.
    pub noise_factor: f32,
    /// Threshold in units of the pixel's mean absolute deviation (learns dynamic texture).
    pub deviation_factor: f32,
    /// Smallest blob, as a fraction of the frame's area (at sensitivity 0.5).
    pub min_area: f32,
    /// Smallest ratio of high-frequency to total difference energy for a blob to count as an
    /// object rather than light or shadow.
    pub min_structure: f32,
    /// A track is confirmed when seen in `persist_k` of the last `persist_n` analysed frames.
    pub persist_k: u32,
    pub persist_n: u32,
    /// Fastest motion tracked between frames, in frame widths per second (association gate).
    pub max_speed: f32,
    /// Background time constant for pixels without motion.
    pub background_tau_ms: i64,
    /// Background time constant under motion (how long a stopped object takes to fade in).
    pub foreground_tau_ms: i64,
    /// Fraction of regions whose brightness must jump together to call it a global change.
    pub global_change_fraction: f32,
    /// New motion ignored this long after a global change (IR switch, light switched).
    pub holdoff_ms: i64,
    /// Interval of `Update` events while active.
    pub update_interval_ms: i64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            zones: Vec::new(),
            masks: Vec::new(),
            cooldown_ms: 10_000,
            max_rows_per_block: 4,
            min_threshold: 7.0,
            noise_factor: 4.5,
            deviation_factor: 4.0,
            min_area: 0.0006,
            min_structure: 0.2,
            persist_k: 3,
            persist_n: 5,
            max_speed: 0.3,
            background_tau_ms: 8_000,
            foreground_tau_ms: 60_000,
            global_change_fraction: 0.6,
            holdoff_ms: 1_000,
            update_interval_ms: 1_000,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MotionState {
    Idle,
    Candidate,
    Active,
    Cooldown,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    Update,
    End,
}

/// One change of a zone's event. `boxes` are the confirmed motion boxes (x, y, w, h,
/// normalised) of the frame that caused it; `score` is the peak fraction of the zone covered
/// by confirmed motion so far.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MotionEvent {
    pub zone: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub boxes: Vec<[f32; 4]>,
    pub score: f32,
    pub phase: Phase,
}

/// What one analysed frame gave: event changes, the boxes of blobs that passed every test
/// (confirmed or not), and the fraction of the frame they cover.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    pub events: Vec<MotionEvent>,
    pub boxes: Vec<[f32; 4]>,
    pub score: f32,
}

/// Foreground pixels this close (Chebyshev distance, small-image pixels) belong to one blob:
/// a person a few pixels wide falls apart where clothing matches the background (head and
/// shoulders, then legs, a row or two apart), and each piece alone is under the minimum area.
const JOIN: i32 = 3;

/// A blob this fraction of the minimum area still continues a track it falls within the gate
/// of (it never starts one): a small figure whose clothing matches the background in some
/// frames shows only its head and shoulders there.
const CONTINUE_AREA: f32 = 0.5;

/// Columns × rows of the illumination regions.
const REGIONS_X: usize = 8;
const REGIONS_Y: usize = 6;

/// Time gaps longer than this are treated as this long: after a stream outage the model
/// should adapt fast, not jump.
const MAX_DT_MS: i64 = 10_000;

#[derive(Debug)]
struct Track {
    /// Small-image box: x0, y0, x1, y1 (inclusive).
    bbox: [i32; 4],
    /// Bit i set: seen i analysed frames ago.
    history: u32,
    first_ms: i64,
    confirmed: bool,
    /// Whether it was matched in the current frame.
    hit: bool,
}

#[derive(Debug)]
struct ZoneState {
    name: String,
    /// Threshold and area multiplier from the sensitivity.
    factor: f32,
    /// Small-image pixels of the zone (for the score).
    area: usize,
    state: MotionState,
    tracks: Vec<Track>,
    start_ms: i64,
    last_motion_ms: i64,
    last_update_ms: i64,
    score: f32,
}

/// A blob as one zone sees it: its pixels in the zone, and whether it is only big enough to
/// continue a track.
#[derive(Debug)]
struct Hit {
    bbox: [i32; 4],
    pixels: usize,
    small: bool,
}

/// A blob that passed the per-frame tests.
#[derive(Debug)]
struct Blob {
    pixels: Vec<u32>,
    bbox: [i32; 4],
}

/// The motion detector of one camera (see the module docs).
#[derive(Debug)]
pub struct Detector {
    cfg: DetectorConfig,
    width: usize,
    height: usize,
    block: usize,
    sw: usize,
    sh: usize,
    acc: Vec<u16>,
    cur: Vec<f32>,
    bg: Vec<f32>,
    dev: Vec<f32>,
    /// Local min / max of the background (3×3).
    bg_lo: Vec<f32>,
    bg_hi: Vec<f32>,
    /// Threshold multiplier per pixel: the most sensitive covering zone, 0 when not watched.
    pix_factor: Vec<f32>,
    /// Zone membership bits per pixel.
    zone_bits: Vec<u32>,
    /// Out-of-range distance in units of the pixel's base threshold (0 when inside).
    excess: Vec<f32>,
    fg: Vec<u8>,
    prev_fg: Vec<u8>,
    region_a: [f32; REGIONS_X * REGIONS_Y],
    region_b: [f32; REGIONS_X * REGIONS_Y],
    region_sigma: [f32; REGIONS_X * REGIONS_Y],
    /// Per column / row: lower region index and weight of the upper one.
    col_w: Vec<(usize, f32)>,
    row_w: Vec<(usize, f32)>,
    pix_region: Vec<u8>,
    /// Region row of each pixel row, and the pixel columns of each region column.
    row_region: Vec<usize>,
    col_span: Vec<std::ops::Range<usize>>,
    rows_per_block: usize,
    tmp_lo: Vec<f32>,
    tmp_hi: Vec<f32>,
    /// Foreground before despeckling, and its horizontal 3-sums.
    mask0: Vec<u8>,
    hsum: Vec<u8>,
    zones: Vec<ZoneState>,
    stack: Vec<u32>,
    last_ms: Option<i64>,
    holdoff_until: i64,
}

impl Detector {
    pub fn new(cfg: DetectorConfig, width: u32, height: u32) -> Detector {
        let (width, height) = (width.max(1) as usize, height.max(1) as usize);
        let block = (width / TARGET_WIDTH as usize).max(1);
        let (sw, sh) = ((width / block).max(1), (height / block).max(1));
        let n = sw * sh;
        let mut zones_cfg = cfg.zones.clone();
        if zones_cfg.is_empty() {
            zones_cfg.push(Zone {
                name: "all".into(),
                polygon: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
                sensitivity: 0.5,
            });
        }
        let mut pix_factor = vec![0.0f32; n];
        let mut zone_bits = vec![0u32; n];
        let mut zones = Vec::new();
        for (zi, z) in zones_cfg.iter().take(32).enumerate() {
            let factor = sensitivity_factor(z.sensitivity);
            let mut area = 0;
            for y in 0..sh {
                for x in 0..sw {
                    let p = [(x as f64 + 0.5) / sw as f64, (y as f64 + 0.5) / sh as f64];
                    if inside(&z.polygon, p) && !cfg.masks.iter().any(|m| inside(m, p)) {
                        let i = y * sw + x;
                        zone_bits[i] |= 1 << zi;
                        area += 1;
                        if pix_factor[i] == 0.0 || factor < pix_factor[i] {
                            pix_factor[i] = factor;
                        }
                    }
                }
            }
            zones.push(ZoneState {
                name: z.name.clone(),
                factor,
                area: area.max(1),
                state: MotionState::Idle,
                tracks: Vec::new(),
                start_ms: 0,
                last_motion_ms: 0,
                last_update_ms: 0,
                score: 0.0,
            });
        }
        let axis = |len: usize, parts: usize| -> (Vec<(usize, f32)>, Vec<u8>) {
            let size = len as f32 / parts as f32;
            let weights = (0..len)
                .map(|i| {
                    let c = (i as f32 + 0.5) / size - 0.5;
                    let lo = c.floor().clamp(0.0, (parts - 1) as f32);
                    let w = (c - lo).clamp(0.0, 1.0);
                    let lo = lo as usize;
                    if lo + 1 >= parts {
                        (parts - 1, 0.0)
                    } else {
                        (lo, w)
                    }
                })
                .collect();
            let index = (0..len)
                .map(|i| ((i as f32 / size) as usize).min(parts - 1) as u8)
                .collect();
            (weights, index)
        };
        let (col_w, col_r) = axis(sw, REGIONS_X);
        let (row_w, row_r) = axis(sh, REGIONS_Y);
        let rows_per_block = block.min(cfg.max_rows_per_block.max(1));
        let mut pix_region = vec![0u8; n];
        for y in 0..sh {
            for x in 0..sw {
                pix_region[y * sw + x] = row_r[y] * REGIONS_X as u8 + col_r[x];
            }
        }
        Detector {
            cfg,
            width,
            height,
            block,
            sw,
            sh,
            acc: vec![0; sw * block],
            cur: vec![0.0; n],
            bg: vec![0.0; n],
            dev: vec![0.0; n],
            bg_lo: vec![0.0; n],
            bg_hi: vec![0.0; n],
            pix_factor,
            zone_bits,
            excess: vec![0.0; n],
            fg: vec![0; n],
            prev_fg: vec![0; n],
            region_a: [1.0; REGIONS_X * REGIONS_Y],
            region_b: [0.0; REGIONS_X * REGIONS_Y],
            region_sigma: [1.0; REGIONS_X * REGIONS_Y],
            col_w,
            row_w,
            pix_region,
            row_region: row_r.iter().map(|&r| r as usize).collect(),
            col_span: (0..REGIONS_X)
                .map(|rx| {
                    let start = col_r.iter().position(|&c| c as usize == rx).unwrap_or(sw);
                    let end = col_r
                        .iter()
                        .rposition(|&c| c as usize == rx)
                        .map_or(start, |e| e + 1);
                    start..end
                })
                .collect(),
            rows_per_block,
            tmp_lo: vec![0.0; n],
            tmp_hi: vec![0.0; n],
            mask0: vec![0; n],
            hsum: vec![0; n],
            zones,
            stack: Vec::new(),
            last_ms: None,
            holdoff_until: i64::MIN,
        }
    }

    /// Size of the downscaled picture the detector works on.
    pub fn analysis_size(&self) -> (usize, usize) {
        (self.sw, self.sh)
    }

    /// `y`: luma plane (`stride` bytes per row, `height` rows), `t_ms` its time in ms (any
    /// origin, increasing). A plane too small for the configured size is ignored.
    pub fn analyse(&mut self, y: &[u8], stride: usize, t_ms: i64) -> Analysis {
        let mut out = Analysis::default();
        if stride < self.width || y.len() < stride * (self.height - 1) + self.width {
            return out;
        }
        self.downscale(y, stride);
        let Some(last) = self.last_ms else {
            self.bg.copy_from_slice(&self.cur);
            self.dev.fill(1.0);
            self.last_ms = Some(t_ms);
            return out;
        };
        let dt = (t_ms - last).clamp(1, MAX_DT_MS);
        self.last_ms = Some(t_ms);

        let global = self.compensate();
        if global {
            // The picture changed as a whole (IR cut filter, a light switched): start the
            // model again from this picture rather than explain the change pixel by pixel.
            self.bg.copy_from_slice(&self.cur);
            self.holdoff_until = t_ms + self.cfg.holdoff_ms;
            for z in &mut self.zones {
                z.tracks.retain(|t| t.confirmed);
            }
        }
        self.range();
        self.foreground();
        self.update_background(dt);
        let blobs = if t_ms < self.holdoff_until {
            Vec::new()
        } else {
            self.blobs()
        };
        let n = (self.sw * self.sh) as f32;
        let (fw, fh) = (self.sw as f32, self.sh as f32);
        let norm = |b: &[i32; 4]| {
            [
                b[0] as f32 / fw,
                b[1] as f32 / fh,
                (b[2] - b[0] + 1) as f32 / fw,
                (b[3] - b[1] + 1) as f32 / fh,
            ]
        };
        let gate = self.cfg.max_speed * fw * dt as f32 / 1000.0 + 2.0;
        let min_pixels = self.cfg.min_area * n;
        let full: Vec<&Blob> = blobs
            .iter()
            .filter(|b| b.pixels.len() as f32 >= min_pixels * self.min_factor())
            .collect();
        out.boxes = full.iter().map(|b| norm(&b.bbox)).collect();
        out.score = full.iter().map(|b| b.pixels.len()).sum::<usize>() as f32 / n;
        for (zi, zone) in self.zones.iter_mut().enumerate() {
            let bit = 1u32 << zi;
            let mut hits = Vec::new();
            for b in &blobs {
                // A pixel counts for this zone if it lies in it and clears the zone's own
                // threshold, and the blob is big enough for the zone's sensitivity.
                let count = b
                    .pixels
                    .iter()
                    .filter(|&&p| {
                        let p = p as usize;
                        self.zone_bits[p] & bit != 0 && self.excess[p] >= zone.factor
                    })
                    .count();
                let need = min_pixels * zone.factor;
                if count as f32 >= need {
                    hits.push(Hit {
                        bbox: b.bbox,
                        pixels: count,
                        small: false,
                    });
                } else if count >= 2 && count as f32 >= need * CONTINUE_AREA {
                    hits.push(Hit {
                        bbox: b.bbox,
                        pixels: count,
                        small: true,
                    });
                }
            }
            step_zone(zone, &hits, t_ms, gate, &self.cfg, &mut out.events, &norm);
        }
        out
    }

    /// Threshold multiplier of the most sensitive zone.
    fn min_factor(&self) -> f32 {
        self.zones
            .iter()
            .map(|z| z.factor)
            .fold(f32::INFINITY, f32::min)
    }

    /// The most advanced state of any zone.
    pub fn state(&self) -> MotionState {
        let rank = |s: MotionState| match s {
            MotionState::Idle => 0,
            MotionState::Candidate => 1,
            MotionState::Cooldown => 2,
            MotionState::Active => 3,
        };
        self.zones
            .iter()
            .map(|z| z.state)
            .max_by_key(|s| rank(*s))
            .unwrap_or(MotionState::Idle)
    }

    /// State of one zone by name.
    pub fn zone_state(&self, name: &str) -> Option<MotionState> {
        self.zones.iter().find(|z| z.name == name).map(|z| z.state)
    }

    /// Candidate, Active or Cooldown: the shell should analyse at full rate now.
    pub fn wants_full_rate(&self) -> bool {
        self.state() != MotionState::Idle
    }

    /// Block-average the Y plane into `cur`. Rows of one block row are summed into a `u16`
    /// accumulator (vectorises; at most 257 rows keeps it from overflowing), then each block's
    /// columns are folded. Large blocks read `max_rows_per_block` evenly spaced rows rather
    /// than all: memory bandwidth, not arithmetic, is what a 1080p plane costs, and a dozen
    /// columns times a few rows already averages the noise down several fold.
    fn downscale(&mut self, y: &[u8], stride: usize) {
        let (k, sw) = (self.block, self.sw);
        let used = sw * k;
        let rows = self.rows_per_block;
        let scale = 1.0 / (k * rows) as f32;
        for by in 0..self.sh {
            self.acc.fill(0);
            for j in 0..rows {
                let r = (2 * j + 1) * k / (2 * rows);
                let start = (by * k + r) * stride;
                let row = &y[start..start + used];
                for (a, &p) in self.acc.iter_mut().zip(row) {
                    *a += u16::from(p);
                }
            }
            let out = &mut self.cur[by * sw..(by + 1) * sw];
            match k {
                1 => fold::<1>(&self.acc, out, scale),
                2 => fold::<2>(&self.acc, out, scale),
                3 => fold::<3>(&self.acc, out, scale),
                4 => fold::<4>(&self.acc, out, scale),
                5 => fold::<5>(&self.acc, out, scale),
                6 => fold::<6>(&self.acc, out, scale),
                8 => fold::<8>(&self.acc, out, scale),
                10 => fold::<10>(&self.acc, out, scale),
                12 => fold::<12>(&self.acc, out, scale),
                15 => fold::<15>(&self.acc, out, scale),
                16 => fold::<16>(&self.acc, out, scale),
                24 => fold::<24>(&self.acc, out, scale),
                _ => {
                    for (o, chunk) in out.iter_mut().zip(self.acc.chunks_exact(k)) {
                        let s: u32 = chunk.iter().map(|&v| u32::from(v)).sum();
                        *o = s as f32 * scale;
                    }
                }
            }
        }
    }

    /// Fits the per-region gain/offset, folds it into the background and says whether the
    /// change was global. A least-squares fit over last frame's background pixels, the
    /// median absolute residual (a noise estimate an object in the region cannot inflate),
    /// then a refit over the inliers (within 2.5 σ) and its median residual as the region's
    /// noise. Every other row and column is sampled: a region still gives dozens of samples.
    fn compensate(&mut self) -> bool {
        const R: usize = REGIONS_X * REGIONS_Y;
        let mut a = [1.0f32; R];
        let mut b = [0.0f32; R];
        let mut sigma = [1.0f32; R];
        let mut cap = [f32::INFINITY; R];
        for _ in 0..2 {
            self.fit(&mut a, &mut b, &cap);
            self.median_residual(&a, &b, &mut sigma);
            for r in 0..R {
                cap[r] = 2.5 * sigma[r] + 2.0;
            }
        }
        let mut changed = 0;
        for r in 0..R {
            // The change a region saw at mid-grey: gain and offset combined.
            let shift = (a[r] - 1.0) * 128.0 + b[r];
            if shift.abs() > 8.0 + 2.0 * sigma[r] {
                changed += 1;
            }
        }
        self.region_a = a;
        self.region_b = b;
        self.region_sigma = sigma;
        let global = changed as f32 >= self.cfg.global_change_fraction * R as f32;
        if !global {
            let sw = self.sw;
            let mut ra = [0.0f32; REGIONS_X];
            let mut rb = [0.0f32; REGIONS_X];
            for (y, &(ry, wy)) in self.row_w.iter().enumerate() {
                let ry1 = (ry + 1).min(REGIONS_Y - 1);
                for rx in 0..REGIONS_X {
                    let (i0, i1) = (ry * REGIONS_X + rx, ry1 * REGIONS_X + rx);
                    ra[rx] = a[i0] + (a[i1] - a[i0]) * wy;
                    rb[rx] = b[i0] + (b[i1] - b[i0]) * wy;
                }
                let bg = &mut self.bg[y * sw..(y + 1) * sw];
                for (g, &(rx, wx)) in bg.iter_mut().zip(&self.col_w) {
                    let rx1 = (rx + 1).min(REGIONS_X - 1);
                    let ga = ra[rx] + (ra[rx1] - ra[rx]) * wx;
                    let gb = rb[rx] + (rb[rx1] - rb[rx]) * wx;
                    *g = (ga * *g + gb).clamp(0.0, 255.0);
                }
            }
        }
        global
    }

    /// Least-squares `cur ≈ a·bg + b` per region over sampled background pixels whose
    /// residual under the current `a`, `b` is within `cap`.
    fn fit(
        &self,
        a: &mut [f32; REGIONS_X * REGIONS_Y],
        b: &mut [f32; REGIONS_X * REGIONS_Y],
        cap: &[f32; REGIONS_X * REGIONS_Y],
    ) {
        const R: usize = REGIONS_X * REGIONS_Y;
        let sw = self.sw;
        let mut s = [[0.0f32; 5]; R];
        for y in (0..self.sh).step_by(2) {
            let ry = self.row_region[y];
            let row = y * sw..(y + 1) * sw;
            let (cur, bg, fg) = (
                &self.cur[row.clone()],
                &self.bg[row.clone()],
                &self.prev_fg[row],
            );
            for rx in 0..REGIONS_X {
                let r = ry * REGIONS_X + rx;
                let cols = self.col_span[rx].clone();
                let (ar, br, cr) = (a[r], b[r], cap[r]);
                let mut e = [0.0f32; 5];
                let it = bg[cols.clone()]
                    .iter()
                    .zip(&cur[cols.clone()])
                    .zip(&fg[cols]);
                for ((&g, &c), &f) in it.step_by(2) {
                    let keep = f == 0 && (c - (ar * g + br)).abs() <= cr;
                    let w = if keep { 1.0 } else { 0.0 };
                    e[0] += w;
                    e[1] += w * g;
                    e[2] += w * c;
                    e[3] += w * g * g;
                    e[4] += w * g * c;
                }
                for (t, v) in s[r].iter_mut().zip(e) {
                    *t += v;
                }
            }
        }
        for r in 0..R {
            let [n, sg, sc, sgg, sgc] = s[r];
            if n < 6.0 {
                a[r] = 1.0;
                b[r] = 0.0;
                continue;
            }
            let (mg, mc) = (sg / n, sc / n);
            let var = (sgg / n - mg * mg).max(0.0);
            let cov = sgc / n - mg * mc;
            // Pull the slope towards 1 where the background is flat: there only the offset
            // is observable.
            const RIDGE: f32 = 16.0;
            let slope = ((cov + RIDGE) / (var + RIDGE)).clamp(0.25, 4.0);
            a[r] = slope;
            b[r] = mc - slope * mg;
        }
    }

    /// Robust noise per region: 1.4826 × the median absolute residual (histogram of
    /// quarter-level bins), floored at a quarter level.
    fn median_residual(
        &self,
        a: &[f32; REGIONS_X * REGIONS_Y],
        b: &[f32; REGIONS_X * REGIONS_Y],
        sigma: &mut [f32; REGIONS_X * REGIONS_Y],
    ) {
        const BINS: usize = 128;
        let sw = self.sw;
        let mut hist = [[0u16; BINS]; REGIONS_X * REGIONS_Y];
        for y in (0..self.sh).step_by(2) {
            let ry = self.row_region[y];
            let row = y * sw..(y + 1) * sw;
            let (cur, bg, fg) = (
                &self.cur[row.clone()],
                &self.bg[row.clone()],
                &self.prev_fg[row],
            );
            for rx in 0..REGIONS_X {
                let r = ry * REGIONS_X + rx;
                let cols = self.col_span[rx].clone();
                let (ar, br) = (a[r], b[r]);
                let h = &mut hist[r];
                let it = bg[cols.clone()]
                    .iter()
                    .zip(&cur[cols.clone()])
                    .zip(&fg[cols]);
                for ((&g, &c), &f) in it.step_by(2) {
                    if f == 0 {
                        let bin = ((c - (ar * g + br)).abs() * 4.0) as usize;
                        h[bin.min(BINS - 1)] += 1;
                    }
                }
            }
        }
        for (s, h) in sigma.iter_mut().zip(&hist) {
            let n: u32 = h.iter().map(|&c| u32::from(c)).sum();
            if n == 0 {
                *s = 1.0;
                continue;
            }
            let mut seen = 0u32;
            let mut med = BINS - 1;
            for (i, &c) in h.iter().enumerate() {
                seen += u32::from(c);
                if 2 * seen >= n {
                    med = i;
                    break;
                }
            }
            *s = (1.4826 * (med as f32 + 0.5) / 4.0).max(0.25);
        }
    }

    /// 3×3 min / max of the background, separable.
    fn range(&mut self) {
        let (sw, sh) = (self.sw, self.sh);
        for y in 0..sh {
            let row = &self.bg[y * sw..(y + 1) * sw];
            let lo = &mut self.tmp_lo[y * sw..(y + 1) * sw];
            let hi = &mut self.tmp_hi[y * sw..(y + 1) * sw];
            lo[0] = row[0].min(row[1.min(sw - 1)]);
            hi[0] = row[0].max(row[1.min(sw - 1)]);
            for (x, w) in row.windows(3).enumerate() {
                lo[x + 1] = w[0].min(w[1]).min(w[2]);
                hi[x + 1] = w[0].max(w[1]).max(w[2]);
            }
            if sw > 1 {
                lo[sw - 1] = row[sw - 1].min(row[sw - 2]);
                hi[sw - 1] = row[sw - 1].max(row[sw - 2]);
            }
        }
        for y in 0..sh {
            let (u, d) = (y.saturating_sub(1), (y + 1).min(sh - 1));
            let out_lo = &mut self.bg_lo[y * sw..(y + 1) * sw];
            let (a, b, c) = (
                &self.tmp_lo[u * sw..(u + 1) * sw],
                &self.tmp_lo[y * sw..(y + 1) * sw],
                &self.tmp_lo[d * sw..(d + 1) * sw],
            );
            for (((o, &a), &b), &c) in out_lo.iter_mut().zip(a).zip(b).zip(c) {
                *o = a.min(b).min(c);
            }
            let out_hi = &mut self.bg_hi[y * sw..(y + 1) * sw];
            let (a, b, c) = (
                &self.tmp_hi[u * sw..(u + 1) * sw],
                &self.tmp_hi[y * sw..(y + 1) * sw],
                &self.tmp_hi[d * sw..(d + 1) * sw],
            );
            for (((o, &a), &b), &c) in out_hi.iter_mut().zip(a).zip(b).zip(c) {
                *o = a.max(b).max(c);
            }
        }
    }

    /// Per-pixel test against the background's local range; then drops isolated pixels.
    fn foreground(&mut self) {
        let cfg = &self.cfg;
        let sw = self.sw;
        for y in 0..self.sh {
            let row = y * sw..(y + 1) * sw;
            let ry = self.row_region[y];
            for rx in 0..REGIONS_X {
                let base = cfg
                    .min_threshold
                    .max(cfg.noise_factor * self.region_sigma[ry * REGIONS_X + rx]);
                let cols = y * sw + self.col_span[rx].start..y * sw + self.col_span[rx].end;
                let it = self.cur[cols.clone()]
                    .iter()
                    .zip(&self.bg_lo[cols.clone()])
                    .zip(&self.bg_hi[cols.clone()])
                    .zip(&self.dev[cols.clone()])
                    .zip(&self.pix_factor[cols.clone()])
                    .zip(self.excess[cols.clone()].iter_mut())
                    .zip(self.mask0[cols].iter_mut());
                for ((((((&c, &lo), &hi), &dev), &f), ex), m) in it {
                    let thr = base.max(cfg.deviation_factor * dev);
                    let out = (lo - c).max(c - hi);
                    let hit = f > 0.0 && out >= f * thr;
                    *ex = if hit { out / thr } else { 0.0 };
                    *m = u8::from(hit);
                }
            }
            let _ = row;
        }
        // Despeckle: a foreground pixel needs two foreground 8-neighbours (3×3 count ≥ 3),
        // counted with separable sums.
        let sh = self.sh;
        for y in 0..sh {
            let m = &self.mask0[y * sw..(y + 1) * sw];
            let h = &mut self.hsum[y * sw..(y + 1) * sw];
            for x in 0..sw {
                let l = if x > 0 { m[x - 1] } else { 0 };
                let r = if x + 1 < sw { m[x + 1] } else { 0 };
                h[x] = l + m[x] + r;
            }
        }
        for y in 0..sh {
            for x in 0..sw {
                let i = y * sw + x;
                let up = if y > 0 { self.hsum[i - sw] } else { 0 };
                let down = if y + 1 < sh { self.hsum[i + sw] } else { 0 };
                let count = up + self.hsum[i] + down;
                self.fg[i] = u8::from(self.mask0[i] != 0 && count >= 3);
            }
        }
        self.prev_fg.copy_from_slice(&self.fg);
    }

    fn update_background(&mut self, dt: i64) {
        let alpha = |tau: i64| 1.0 - (-(dt as f32) / tau.max(1) as f32).exp();
        let (a_bg, a_fg) = (
            alpha(self.cfg.background_tau_ms),
            alpha(self.cfg.foreground_tau_ms),
        );
        for i in 0..self.cur.len() {
            let d = self.cur[i] - self.bg[i];
            let a = if self.fg[i] != 0 { a_fg } else { a_bg };
            self.bg[i] += a * d;
            if self.fg[i] == 0 {
                self.dev[i] += a_bg * (d.abs() - self.dev[i]);
            }
        }
    }

    /// Connected components of the foreground that are large enough for the most sensitive
    /// zone and pass the structure test.
    fn blobs(&mut self) -> Vec<Blob> {
        let (sw, sh) = (self.sw, self.sh);
        let n = sw * sh;
        let min_factor = self.min_factor();
        let min_pixels = (self.cfg.min_area * n as f32 * min_factor * CONTINUE_AREA).max(2.0);
        let mut seen = vec![false; n];
        let mut blobs = Vec::new();
        for start in 0..n {
            if self.fg[start] == 0 || seen[start] {
                continue;
            }
            seen[start] = true;
            self.stack.clear();
            self.stack.push(start as u32);
            let mut pixels = Vec::new();
            let mut bbox = [i32::MAX, i32::MAX, i32::MIN, i32::MIN];
            while let Some(p) = self.stack.pop() {
                pixels.push(p);
                let (x, y) = ((p as usize % sw) as i32, (p as usize / sw) as i32);
                bbox = [
                    bbox[0].min(x),
                    bbox[1].min(y),
                    bbox[2].max(x),
                    bbox[3].max(y),
                ];
                for dy in -JOIN..=JOIN {
                    for dx in -JOIN..=JOIN {
                        let (nx, ny) = (x + dx, y + dy);
                        if nx < 0 || ny < 0 || nx >= sw as i32 || ny >= sh as i32 {
                            continue;
                        }
                        let q = ny as usize * sw + nx as usize;
                        if self.fg[q] != 0 && !seen[q] {
                            seen[q] = true;
                            self.stack.push(q as u32);
                        }
                    }
                }
            }
            if (pixels.len() as f32) < min_pixels {
                continue;
            }
            if self.structure(&pixels) < self.cfg.min_structure {
                continue;
            }
            blobs.push(Blob { pixels, bbox });
        }
        blobs
    }

    /// High-frequency share of the blob's difference to the background: a moving object
    /// brings edges and texture, a light pool or a shadow a smooth bump.
    pub(crate) fn structure(&self, pixels: &[u32]) -> f32 {
        let (sw, sh) = (self.sw as i32, self.sh as i32);
        let d = |x: i32, y: i32| {
            let (x, y) = (x.clamp(0, sw - 1), y.clamp(0, sh - 1));
            let i = (y * sw + x) as usize;
            self.cur[i] - self.bg[i]
        };
        let (mut hf, mut total) = (0.0f32, 0.0f32);
        let mut noise = 0.0f32;
        for &p in pixels {
            let (x, y) = ((p as i32) % sw, (p as i32) / sw);
            let mut s = 0.0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    s += d(x + dx, y + dy);
                }
            }
            let c = d(x, y);
            hf += (c - s / 9.0).abs();
            total += c.abs();
            noise += self.region_sigma[self.pix_region[p as usize] as usize];
        }
        // Noise alone has a high-frequency share near 1; take it out of the numerator.
        ((hf - 0.9 * noise).max(0.0)) / total.max(1e-3)
    }
}

/// Sums each run of `K` accumulator columns into one output pixel.
fn fold<const K: usize>(acc: &[u16], out: &mut [f32], scale: f32) {
    for (o, chunk) in out.iter_mut().zip(acc.chunks_exact(K)) {
        let s: u32 = chunk.iter().map(|&v| u32::from(v)).sum();
        *o = s as f32 * scale;
    }
}

/// Threshold and area multiplier for a sensitivity in 0..1 (0.5 → 1, 1 → 0.5, 0 → 2).
fn sensitivity_factor(s: f64) -> f32 {
    let s = if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.5
    };
    2f64.powf((0.5 - s) * 2.0) as f32
}

/// Even-odd point-in-polygon.
fn inside(poly: &[[f64; 2]], p: [f64; 2]) -> bool {
    let mut inside = false;
    let n = poly.len();
    if n < 3 {
        return false;
    }
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

fn grow(b: [i32; 4], g: f32) -> [i32; 4] {
    let g = g.ceil() as i32;
    [b[0] - g, b[1] - g, b[2] + g, b[3] + g]
}

fn union(a: [i32; 4], b: [i32; 4]) -> [i32; 4] {
    [
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[2].max(b[2]),
        a[3].max(b[3]),
    ]
}

fn overlaps(a: [i32; 4], b: [i32; 4]) -> bool {
    a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3]
}

/// Advances one zone by a frame: associates the zone's blobs with tracks and runs the
/// idle → candidate → active → cooldown machine.
fn step_zone(
    zone: &mut ZoneState,
    hits: &[Hit],
    t_ms: i64,
    gate: f32,
    cfg: &DetectorConfig,
    events: &mut Vec<MotionEvent>,
    norm: &dyn Fn(&[i32; 4]) -> [f32; 4],
) {
    let window = (1u32 << cfg.persist_n.clamp(1, 31)) - 1;
    for t in &mut zone.tracks {
        t.history = (t.history << 1) & window;
        t.hit = false;
    }
    // Full-size blobs first, so that a small one joins the track they made or continued.
    let ordered = hits
        .iter()
        .filter(|h| !h.small)
        .chain(hits.iter().filter(|h| h.small));
    for hit in ordered {
        let bbox = hit.bbox;
        // Confirmed tracks first, then the nearest; an object that falls apart into
        // several blobs keeps feeding one track (its box becomes their union).
        let found = zone
            .tracks
            .iter_mut()
            .filter(|t| overlaps(grow(t.bbox, gate), bbox))
            .min_by_key(|t| {
                let c = |b: [i32; 4]| (b[0] + b[2], b[1] + b[3]);
                let (a, b) = (c(t.bbox), c(bbox));
                (!t.confirmed, (a.0 - b.0).abs() + (a.1 - b.1).abs())
            });
        match found {
            Some(t) => {
                t.bbox = if t.hit { union(t.bbox, bbox) } else { bbox };
                t.history |= 1;
                t.hit = true;
            }
            None if hit.small => {}
            None => zone.tracks.push(Track {
                bbox,
                history: 1,
                first_ms: t_ms,
                confirmed: false,
                hit: true,
            }),
        }
    }
    zone.tracks.retain(|t| t.history != 0);
    for t in &mut zone.tracks {
        if t.history.count_ones() >= cfg.persist_k {
            t.confirmed = true;
        }
    }
    let confirmed: Vec<[i32; 4]> = zone
        .tracks
        .iter()
        .filter(|t| t.confirmed && t.hit)
        .map(|t| t.bbox)
        .collect();
    let moving = !confirmed.is_empty();
    if moving {
        // A confirmed track's box is the union of the blobs that fed it this frame.
        let covered: usize = hits
            .iter()
            .filter(|h| confirmed.iter().any(|&c| union(c, h.bbox) == c))
            .map(|h| h.pixels)
            .sum();
        zone.score = zone.score.max(covered as f32 / zone.area as f32);
    }
    let boxes = || confirmed.iter().map(norm).collect::<Vec<_>>();
    let event = |zone: &ZoneState, phase, end_ms, boxes| MotionEvent {
        zone: zone.name.clone(),
        start_ms: zone.start_ms,
        end_ms,
        boxes,
        score: zone.score,
        phase,
    };
    match zone.state {
        MotionState::Idle | MotionState::Candidate => {
            if moving {
                zone.start_ms = zone
                    .tracks
                    .iter()
                    .filter(|t| t.confirmed)
                    .map(|t| t.first_ms)
                    .min()
                    .unwrap_or(t_ms);
                zone.last_motion_ms = t_ms;
                zone.last_update_ms = t_ms;
                zone.state = MotionState::Active;
                events.push(event(zone, Phase::Start, None, boxes()));
            } else if zone.tracks.is_empty() {
                zone.state = MotionState::Idle;
                zone.score = 0.0;
            } else {
                zone.state = MotionState::Candidate;
                zone.score = 0.0;
            }
        }
        MotionState::Active | MotionState::Cooldown => {
            if moving {
                zone.last_motion_ms = t_ms;
                zone.state = MotionState::Active;
                if t_ms - zone.last_update_ms >= cfg.update_interval_ms {
                    zone.last_update_ms = t_ms;
                    events.push(event(zone, Phase::Update, None, boxes()));
                }
            } else if t_ms - zone.last_motion_ms >= cfg.cooldown_ms {
                zone.state = MotionState::Idle;
                let end = zone.last_motion_ms;
                events.push(event(zone, Phase::End, Some(end), Vec::new()));
                zone.tracks.retain(|t| !t.confirmed);
                zone.score = 0.0;
                if !zone.tracks.is_empty() {
                    zone.state = MotionState::Candidate;
                }
            } else {
                zone.state = MotionState::Cooldown;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 320;
    const H: usize = 180;

    /// A deterministic generator for test noise.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        }
        /// Roughly normal, unit variance.
        fn normal(&mut self) -> f32 {
            (0..12).map(|_| self.next()).sum()
        }
    }

    fn background(x: usize, y: usize) -> f32 {
        // Soft texture: gradients and a few stripes, like walls and a road.
        60.0 + (x as f32 * 0.3) + 25.0 * (((x / 16) + (y / 12)) % 2) as f32 + (y as f32 * 0.2)
    }

    /// A frame: background plus `offset`, noise `sigma`, and an optional textured block at
    /// `(bx, by)` of `bw × bh` pixels.
    fn frame(
        rng: &mut Lcg,
        offset: f32,
        sigma: f32,
        block: Option<(usize, usize, usize, usize)>,
    ) -> Vec<u8> {
        let mut out = vec![0u8; W * H];
        for y in 0..H {
            for x in 0..W {
                let mut v = background(x, y) + offset;
                if let Some((bx, by, bw, bh)) = block
                    && (bx..bx + bw).contains(&x)
                    && (by..by + bh).contains(&y)
                {
                    v = if ((x - bx) / 4 + (y - by) / 4) % 2 == 0 {
                        20.0
                    } else {
                        220.0
                    };
                }
                v += sigma * rng.normal();
                out[y * W + x] = v.clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    /// Runs `frames` frames at 5 fps; `block(i)` places the moving block. Returns every event.
    fn run(
        d: &mut Detector,
        frames: usize,
        mut make: impl FnMut(usize, &mut Lcg) -> Vec<u8>,
    ) -> Vec<MotionEvent> {
        let mut rng = Lcg(7);
        let mut events = Vec::new();
        for i in 0..frames {
            let y = make(i, &mut rng);
            events.extend(d.analyse(&y, W, i as i64 * 200).events);
        }
        events
    }

    fn crossing(i: usize) -> Option<(usize, usize, usize, usize)> {
        // Enters at frame 20, walks 6 px a frame, gone after frame 60.
        (20..60)
            .contains(&i)
            .then(|| (20 + (i - 20) * 6, 100, 16, 40))
    }

    #[test]
    fn a_moving_textured_block_starts_and_ends_an_event_with_boxes_around_it() {
        let mut d = Detector::new(
            DetectorConfig {
                cooldown_ms: 2_000,
                ..Default::default()
            },
            W as u32,
            H as u32,
        );
        let mut rng = Lcg(1);
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for i in 0..100 {
            let y = frame(&mut rng, 0.0, 2.0, crossing(i));
            let t = i as i64 * 200;
            let a = d.analyse(&y, W, t);
            for e in a.events {
                assert_eq!(e.zone, "all");
                match e.phase {
                    Phase::Start => {
                        // The box covers the block where it is now.
                        let (bx, by, bw, bh) = crossing(i).unwrap();
                        let b = e.boxes[0];
                        let (cx, cy) = (
                            (bx + bw / 2) as f32 / W as f32,
                            (by + bh / 2) as f32 / H as f32,
                        );
                        assert!(
                            b[0] <= cx && cx <= b[0] + b[2] && b[1] <= cy && cy <= b[1] + b[3],
                            "{b:?}"
                        );
                        assert!(b[2] < 0.2 && b[3] < 0.4, "box too big: {b:?}");
                        assert!(e.start_ms >= 20 * 200 && e.start_ms <= t);
                        assert!(t <= 26 * 200, "confirmed late, at {t}");
                        starts.push(e);
                    }
                    Phase::End => ends.push(e),
                    Phase::Update => {}
                }
            }
            if (30..55).contains(&i) {
                assert!(d.wants_full_rate());
                assert_eq!(d.state(), MotionState::Active);
            }
        }
        assert_eq!(starts.len(), 1, "{starts:?}");
        assert_eq!(ends.len(), 1, "{ends:?}");
        let end = ends[0].end_ms.unwrap();
        assert!((58 * 200..=60 * 200).contains(&end), "ended at {end}");
        assert_eq!(d.state(), MotionState::Idle);
        assert!(ends[0].score > 0.0);
    }

    #[test]
    fn a_global_brightness_step_is_not_motion() {
        let mut d = Detector::new(DetectorConfig::default(), W as u32, H as u32);
        for delta in [40.0f32, -30.0] {
            let events = run(&mut d, 80, |i, rng| {
                frame(rng, if i >= 30 { delta } else { 0.0 }, 2.0, None)
            });
            assert!(events.is_empty(), "step {delta}: {events:?}");
        }
        // A gain change (auto-exposure) too.
        let mut d = Detector::new(DetectorConfig::default(), W as u32, H as u32);
        let events = run(&mut d, 80, |i, rng| {
            let y = frame(rng, 0.0, 2.0, None);
            if i < 30 {
                y
            } else {
                y.iter()
                    .map(|&v| (f32::from(v) * 1.4).min(255.0) as u8)
                    .collect()
            }
        });
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn heavy_noise_is_not_motion() {
        let mut d = Detector::new(DetectorConfig::default(), W as u32, H as u32);
        let events = run(&mut d, 150, |_, rng| frame(rng, -30.0, 14.0, None));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(d.state(), MotionState::Idle);
    }

    #[test]
    fn a_masked_area_is_not_analysed() {
        let mask = vec![[0.0, 0.4], [1.0, 0.4], [1.0, 0.9], [0.0, 0.9]];
        let cfg = DetectorConfig {
            masks: vec![mask],
            ..Default::default()
        };
        let mut d = Detector::new(cfg, W as u32, H as u32);
        let events = run(&mut d, 80, |i, rng| frame(rng, 0.0, 2.0, crossing(i)));
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn events_carry_the_zone_they_happen_in() {
        let zone = |name: &str, x0: f64, x1: f64| Zone {
            name: name.into(),
            polygon: vec![[x0, 0.0], [x1, 0.0], [x1, 1.0], [x0, 1.0]],
            sensitivity: 0.5,
        };
        let cfg = DetectorConfig {
            zones: vec![zone("gate", 0.0, 0.5), zone("field", 0.5, 1.0)],
            cooldown_ms: 1_000,
            ..Default::default()
        };
        let mut d = Detector::new(cfg, W as u32, H as u32);
        // The block stays in the left half.
        let events = run(&mut d, 70, |i, rng| {
            let b = (20..45)
                .contains(&i)
                .then(|| (20 + (i - 20) * 4, 100, 16, 40));
            frame(rng, 0.0, 2.0, b)
        });
        let starts: Vec<_> = events.iter().filter(|e| e.phase == Phase::Start).collect();
        assert_eq!(starts.len(), 1, "{events:?}");
        assert_eq!(starts[0].zone, "gate");
        assert_eq!(d.zone_state("field"), Some(MotionState::Idle));
    }

    #[test]
    fn cooldown_holds_the_event_through_short_pauses() {
        let cfg = DetectorConfig {
            cooldown_ms: 3_000,
            ..Default::default()
        };
        let mut d = Detector::new(cfg, W as u32, H as u32);
        // Moves for 4 s, stands hidden 2 s (shorter than the cooldown), moves again 4 s.
        let at = |i: usize| match i {
            20..40 => Some((20 + (i - 20) * 5, 100, 16, 40)),
            50..70 => Some((280 - (i - 50) * 5, 100, 16, 40)),
            _ => None,
        };
        let mut rng = Lcg(3);
        let mut phases = Vec::new();
        let mut states = Vec::new();
        for i in 0..110 {
            let a = d.analyse(&frame(&mut rng, 0.0, 2.0, at(i)), W, i as i64 * 200);
            phases.extend(a.events.iter().map(|e| (i, e.phase, e.end_ms)));
            states.push(d.state());
        }
        let starts = phases.iter().filter(|p| p.1 == Phase::Start).count();
        let ends: Vec<_> = phases.iter().filter(|p| p.1 == Phase::End).collect();
        assert_eq!((starts, ends.len()), (1, 1), "{phases:?}");
        // Cooling down in the pause, active again after, idle once 3 s have passed.
        assert!(
            states[42..48].contains(&MotionState::Cooldown),
            "{states:?}"
        );
        assert_eq!(states[60], MotionState::Active);
        let (i, _, end) = *ends[0];
        let last = end.unwrap();
        assert!((67 * 200..=70 * 200).contains(&last), "last motion {last}");
        assert_eq!(
            i as i64 * 200 - last,
            3_000,
            "ended {} ms after the last motion",
            i as i64 * 200 - last
        );
        assert_eq!(states[109], MotionState::Idle);
    }

    #[test]
    fn keyframe_rate_still_detects_and_goes_full_rate() {
        let mut d = Detector::new(DetectorConfig::default(), W as u32, H as u32);
        let mut rng = Lcg(5);
        let mut t = 0i64;
        let mut started = false;
        let bx = |t: i64| (10 + (t - 20_000) / 40) as usize;
        // One frame per 2 s while idle, every 200 ms once the detector asks for it.
        while t < 40_000 {
            let block = (20_000..34_000).contains(&t).then(|| (bx(t), 100, 16, 40));
            let a = d.analyse(&frame(&mut rng, 0.0, 2.0, block), W, t);
            started |= a.events.iter().any(|e| e.phase == Phase::Start);
            t += if d.wants_full_rate() { 200 } else { 2_000 };
        }
        assert!(started);
    }

    #[test]
    fn sensitivity_maps_to_a_factor() {
        assert!((sensitivity_factor(0.5) - 1.0).abs() < 1e-6);
        assert!((sensitivity_factor(1.0) - 0.5).abs() < 1e-6);
        assert!((sensitivity_factor(0.0) - 2.0).abs() < 1e-6);
        assert!(inside(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.2, 0.2]));
        assert!(!inside(&[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [0.8, 0.8]));
    }
}
