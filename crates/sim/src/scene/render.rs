//! Rendering a [`SceneSpec`] to YUV 4:2:0: the generated street background, the per-frame state
//! (tone, shake, noise level), textured objects, light, weather and sensor noise, into buffers
//! that a [`Renderer`] reuses from frame to frame.
//!
//! Speed comes from doing per-pixel work only where it is needed: the tone-mapped background
//! is cached per (day/night, lighting) state and copied with the shake offset as whole rows;
//! sensor noise is added from a pre-drawn table of Gaussian samples at a random offset per row;
//! objects, light pools and shadows touch only their bounding boxes.

use std::fmt;

use super::rng::{Rng, derive, hash2, value_noise};
use super::{SceneEvent, SceneSpec};
use crate::SimError;

/// One picture in planar YUV 4:2:0 (BT.601 levels): `y` is `width × height`, `u` and `v` are
/// `ceil(width / 2) × ceil(height / 2)`; rows are packed (stride = plane width).
#[derive(Clone, PartialEq, Eq)]
pub struct YuvFrame {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl fmt::Debug for YuvFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YuvFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

impl YuvFrame {
    /// A black picture.
    pub fn new(width: u32, height: u32) -> YuvFrame {
        let (w, h) = (width as usize, height as usize);
        let c = w.div_ceil(2) * h.div_ceil(2);
        YuvFrame {
            width,
            height,
            y: vec![16; w * h],
            u: vec![128; c],
            v: vec![128; c],
        }
    }

    pub fn chroma_width(&self) -> usize {
        (self.width as usize).div_ceil(2)
    }

    pub fn chroma_height(&self) -> usize {
        (self.height as usize).div_ceil(2)
    }

    /// Luma at pixel `(x, y)`.
    pub fn luma(&self, x: usize, y: usize) -> u8 {
        self.y[y * self.width as usize + x]
    }
}

/// Renders frame `frame_index` of `spec` (a one-off; use a [`Renderer`] for sequences).
pub fn render(spec: &SceneSpec, frame_index: u64) -> Result<YuvFrame, SimError> {
    Ok(Renderer::new(spec)?.render(frame_index))
}

/// Renders the frames of one spec, keeping the background, its tone-mapped variants and the
/// noise tables between calls.
pub struct Renderer {
    spec: SceneSpec,
    background: YuvFrame,
    /// Tone-mapped copies of the background, most recently built last.
    tones: Vec<(Tone, YuvFrame)>,
    luma_noise: NoiseTable,
    chroma_noise: NoiseTable,
    /// Per-column scratch for soft ellipses.
    columns: Vec<f32>,
}

impl fmt::Debug for Renderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Renderer")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// How many tone-mapped backgrounds to keep: enough for a lighting step inside an IR span.
const TONE_CACHE: usize = 4;

impl Renderer {
    /// Validates `spec` and generates its background.
    pub fn new(spec: &SceneSpec) -> Result<Renderer, SimError> {
        spec.validate()?;
        Ok(Renderer {
            spec: spec.clone(),
            background: street(spec),
            tones: Vec::new(),
            luma_noise: NoiseTable::default(),
            chroma_noise: NoiseTable::default(),
            columns: Vec::new(),
        })
    }

    pub fn spec(&self) -> &SceneSpec {
        &self.spec
    }

    /// Frames in one loop.
    pub fn frame_count(&self) -> u64 {
        self.spec.frame_count()
    }

    /// Renders frame `frame_index` (taken modulo the loop) into a new buffer.
    pub fn render(&mut self, frame_index: u64) -> YuvFrame {
        let mut out = YuvFrame::new(self.spec.width, self.spec.height);
        self.render_into(frame_index, &mut out);
        out
    }

    /// Renders frame `frame_index` (taken modulo the loop) into `out`, reallocating it only if
    /// its size differs from the spec's.
    pub fn render_into(&mut self, frame_index: u64, out: &mut YuvFrame) {
        let spec = &self.spec;
        let chroma = (spec.width as usize).div_ceil(2) * (spec.height as usize).div_ceil(2);
        if out.width != spec.width
            || out.height != spec.height
            || out.y.len() != spec.width as usize * spec.height as usize
            || out.u.len() != chroma
            || out.v.len() != chroma
        {
            *out = YuvFrame::new(spec.width, spec.height);
        }
        let index = frame_index % spec.frame_count().max(1);
        let t = spec.time_of(index);
        let state = State::at(spec, t);
        let (w, h) = (spec.width as usize, spec.height as usize);
        let (cw, ch) = (out.chroma_width(), out.chroma_height());

        let base = tone_base(&mut self.tones, &self.background, state.tone);
        shift_copy(&base.y, &mut out.y, w, h, state.dx, state.dy);
        let (cdx, cdy) = (state.dx.div_euclid(2), state.dy.div_euclid(2));
        shift_copy(&base.u, &mut out.u, cw, ch, cdx, cdy);
        shift_copy(&base.v, &mut out.v, cw, ch, cdx, cdy);

        let (fw, fh) = (spec.width as f32, spec.height as f32);
        let (sdx, sdy) = (state.dx as f32, state.dy as f32);
        for (i, event) in spec.events.iter().enumerate() {
            if !event.active_at(t) {
                continue;
            }
            let seed = derive(spec.seed, 1000 + i as u64);
            let (Some(b), Some(centre)) = (event.box_at(t), event.centre_at(t)) else {
                continue;
            };
            let (x0, y0) = (b.x * fw + sdx, b.y * fh + sdy);
            let (bw, bh) = (b.w * fw, b.h * fh);
            let vig = vignette(centre[0], centre[1]);
            match *event {
                SceneEvent::PersonCrossing { from, to, .. } => {
                    let person = Person::new(seed, event, t, from, to, bw, bh, fw, fh);
                    draw_sprite(out, x0, y0, bw, bh, state.tone, vig, |x, y| {
                        person.paint(x, y)
                    });
                }
                SceneEvent::SmallAnimal { from, to, .. } => {
                    let animal = Animal::new(seed, event, t, from, to, bw, bh, fw, fh);
                    draw_sprite(out, x0, y0, bw, bh, state.tone, vig, |x, y| {
                        animal.paint(x, y)
                    });
                }
                _ => {}
            }
        }
        // Light and shadow fall on everything, objects included.
        for event in spec.events.iter().filter(|e| e.active_at(t)) {
            let (Some(b), Some(c)) = (event.box_at(t), event.centre_at(t)) else {
                continue;
            };
            let (cx, cy) = (c[0] * fw + sdx, c[1] * fh + sdy);
            let (rx, ry) = (b.w * fw / 2.0, b.h * fh / 2.0);
            match *event {
                SceneEvent::CloudShadow { depth, .. } => {
                    soft_ellipse(
                        &mut out.y,
                        w,
                        h,
                        cx,
                        cy,
                        rx,
                        ry,
                        &mut self.columns,
                        |p, f| p * (1.0 - depth * f),
                    );
                    let chroma = |p: f32, f: f32| 128.0 + (p - 128.0) * (1.0 - 0.5 * depth * f);
                    let (ccx, ccy, crx, cry) = (cx / 2.0, cy / 2.0, rx / 2.0, ry / 2.0);
                    let cols = &mut self.columns;
                    soft_ellipse(&mut out.u, cw, ch, ccx, ccy, crx, cry, cols, chroma);
                    soft_ellipse(&mut out.v, cw, ch, ccx, ccy, crx, cry, cols, chroma);
                }
                SceneEvent::HeadlightSweep { gain, .. } => {
                    soft_ellipse(
                        &mut out.y,
                        w,
                        h,
                        cx,
                        cy,
                        rx,
                        ry,
                        &mut self.columns,
                        |p, f| p + gain * f * f,
                    );
                }
                _ => {}
            }
        }
        for (i, event) in spec.events.iter().enumerate() {
            if !event.active_at(t) {
                continue;
            }
            let mut rng = Rng::new(derive(derive(spec.seed, WEATHER_SALT + i as u64), index));
            match *event {
                SceneEvent::Rain { intensity, .. } => rain(out, &mut rng, intensity),
                SceneEvent::Snow { intensity, .. } => snow(out, &mut rng, intensity),
                _ => {}
            }
        }

        let mut rng = Rng::new(derive(derive(spec.seed, NOISE_SALT), index));
        self.luma_noise.prepare(spec.seed, state.sigma, w);
        self.luma_noise.apply(&mut out.y, w, h, &mut rng);
        // An IR night picture is pure greyscale: its chroma stays exactly neutral.
        if !state.tone.night {
            let sigma = state.sigma * 0.5;
            self.chroma_noise.prepare(derive(spec.seed, 7), sigma, cw);
            self.chroma_noise.apply(&mut out.u, cw, ch, &mut rng);
            self.chroma_noise.apply(&mut out.v, cw, ch, &mut rng);
        }
    }
}

/// Salts that give each random stream of a frame its own sequence.
const WEATHER_SALT: u64 = 0x5745_0000;
const NOISE_SALT: u64 = 0x4e4f_4953;

/// Camera sensor noise in day and in IR night mode (luma levels, one sigma).
const DAY_NOISE: f32 = 1.5;
const NIGHT_NOISE: f32 = 5.0;

/// The picture-wide state at one instant.
struct State {
    tone: Tone,
    dx: i32,
    dy: i32,
    sigma: f32,
}

impl State {
    fn at(spec: &SceneSpec, t: f64) -> State {
        let mut tone = Tone {
            night: spec.night,
            delta: 0,
        };
        let (mut dx, mut dy) = (0.0f32, 0.0f32);
        let mut extra_var = 0.0f32;
        for e in spec.events.iter().filter(|e| e.active_at(t)) {
            match *e {
                SceneEvent::IrSwitch { to_night, .. } => tone.night = to_night,
                SceneEvent::LightingStep { delta, .. } => {
                    tone.delta = tone.delta.saturating_add(delta).clamp(-255, 255)
                }
                SceneEvent::SensorNoise { sigma, .. } => extra_var += sigma * sigma,
                SceneEvent::CameraShake {
                    start_s,
                    amplitude_px,
                    frequency_hz,
                    ..
                } => {
                    // Two incommensurate sways, as a pole in gusty wind moves.
                    let w = std::f64::consts::TAU * f64::from(frequency_hz) * (t - start_s);
                    dx += amplitude_px * w.sin() as f32;
                    dy += 0.6 * amplitude_px * (1.37 * w + 1.0).sin() as f32;
                }
                _ => {}
            }
        }
        let base = if tone.night { NIGHT_NOISE } else { DAY_NOISE };
        State {
            tone,
            dx: dx.round() as i32,
            dy: dy.round() as i32,
            sigma: (base * base + extra_var).sqrt(),
        }
    }
}

/// Exposure state of the camera: IR night mode and the sum of active lighting steps.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Tone {
    night: bool,
    delta: i16,
}

impl Tone {
    /// Maps a daylight luma as seen at a spot with IR illumination `vig`.
    #[inline]
    fn luma(self, y: f32, vig: f32) -> f32 {
        let y = if self.night {
            (y * 0.55 + 10.0) * vig
        } else {
            y
        };
        y + f32::from(self.delta)
    }

    #[inline]
    fn chroma(self, c: f32) -> f32 {
        if self.night { 128.0 } else { c }
    }
}

/// Relative IR illumination at a normalised position: the illuminator lights the centre of the
/// road best and the corners least.
#[inline]
fn vignette(nx: f32, ny: f32) -> f32 {
    let (x, y) = (nx * 2.0 - 1.0, (ny - 0.65) * 1.6);
    (1.35 - 0.55 * (x * x + y * y)).clamp(0.35, 1.35)
}

/// The background under `tone`, from the cache or built now.
fn tone_base<'a>(
    cache: &'a mut Vec<(Tone, YuvFrame)>,
    background: &YuvFrame,
    tone: Tone,
) -> &'a YuvFrame {
    let idx = match cache.iter().position(|(t, _)| *t == tone) {
        Some(i) => i,
        None => {
            if cache.len() >= TONE_CACHE {
                cache.remove(0);
            }
            cache.push((tone, map_tone(background, tone)));
            cache.len() - 1
        }
    };
    &cache[idx].1
}

fn map_tone(bg: &YuvFrame, tone: Tone) -> YuvFrame {
    let mut out = bg.clone();
    let (w, h) = (bg.width as usize, bg.height as usize);
    if tone.night {
        let columns: Vec<f32> = (0..w)
            .map(|x| ((x as f32 + 0.5) / w as f32) * 2.0 - 1.0)
            .map(|x| x * x)
            .collect();
        for (y, row) in out.y.chunks_exact_mut(w).enumerate() {
            let ny = ((y as f32 + 0.5) / h as f32 - 0.65) * 1.6;
            let ny2 = ny * ny;
            for (p, nx2) in row.iter_mut().zip(&columns) {
                let vig = (1.35 - 0.55 * (nx2 + ny2)).clamp(0.35, 1.35);
                let v = (f32::from(*p) * 0.55 + 10.0) * vig + f32::from(tone.delta);
                *p = v.clamp(0.0, 255.0) as u8;
            }
        }
        out.u.fill(128);
        out.v.fill(128);
    } else if tone.delta != 0 {
        let d = tone.delta;
        for p in &mut out.y {
            *p = (i16::from(*p) + d).clamp(0, 255) as u8;
        }
    }
    out
}

/// Copies `src` to `dst` moved by `(dx, dy)` pixels, repeating the edge into the uncovered
/// border (what a stabiliser-less camera shows is new scene there; an edge smear is close).
fn shift_copy(src: &[u8], dst: &mut [u8], w: usize, h: usize, dx: i32, dy: i32) {
    let k = (dx.unsigned_abs() as usize).min(w);
    for (y, d) in dst.chunks_exact_mut(w).take(h).enumerate() {
        let sy = (y as i64 - i64::from(dy)).clamp(0, h as i64 - 1) as usize;
        let s = &src[sy * w..(sy + 1) * w];
        if k == 0 {
            d.copy_from_slice(s);
        } else if dx > 0 {
            d[k..].copy_from_slice(&s[..w - k]);
            d[..k].fill(s[0]);
        } else {
            d[..w - k].copy_from_slice(&s[k..]);
            d[w - k..].fill(s[w - 1]);
        }
    }
}

/// Applies `op(sample, weight)` inside the ellipse centred at `(cx, cy)` with radii `rx`, `ry`,
/// where `weight` is `1 - r²`: 1 at the centre, 0 at the rim (`r` the normalised radius).
#[allow(clippy::too_many_arguments)]
fn soft_ellipse(
    plane: &mut [u8],
    w: usize,
    h: usize,
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    columns: &mut Vec<f32>,
    op: impl Fn(f32, f32) -> f32,
) {
    if rx < 0.5 || ry < 0.5 {
        return;
    }
    let x0 = (cx - rx).floor().max(0.0) as usize;
    let x1 = ((cx + rx).ceil().max(0.0) as usize).min(w);
    let y0 = (cy - ry).floor().max(0.0) as usize;
    let y1 = ((cy + ry).ceil().max(0.0) as usize).min(h);
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    columns.clear();
    columns.extend((x0..x1).map(|x| {
        let n = (x as f32 + 0.5 - cx) / rx;
        n * n
    }));
    for y in y0..y1 {
        let ny = (y as f32 + 0.5 - cy) / ry;
        let ny2 = ny * ny;
        if ny2 >= 1.0 {
            continue;
        }
        let row = &mut plane[y * w + x0..y * w + x1];
        for (p, nx2) in row.iter_mut().zip(columns.iter()) {
            let f = (1.0 - (nx2 + ny2)).max(0.0);
            let v = op(f32::from(*p), f);
            *p = v.clamp(0.0, 255.0) as u8;
        }
    }
}

/// What a sprite puts at one of its pixels.
enum Paint {
    None,
    /// A daylight `[y, u, v]` colour, tone-mapped when drawn.
    Colour([f32; 3]),
    /// Darken what is there by this factor (a shadow).
    Shade(f32),
}

/// Draws a sprite whose box has its top-left corner at `(x0, y0)` (pixels) and size `bw × bh`;
/// `paint` gets box-local pixel coordinates. Chroma is sampled at the centre of each 2×2 block.
#[allow(clippy::too_many_arguments)]
fn draw_sprite(
    out: &mut YuvFrame,
    x0: f32,
    y0: f32,
    bw: f32,
    bh: f32,
    tone: Tone,
    vig: f32,
    paint: impl Fn(f32, f32) -> Paint,
) {
    let (w, h) = (out.width as usize, out.height as usize);
    let span = |lo: f32, len: f32, max: usize| {
        let a = lo.floor().max(0.0) as usize;
        let b = ((lo + len).ceil().max(0.0) as usize).min(max);
        a..b
    };
    for py in span(y0, bh, h) {
        let ly = py as f32 + 0.5 - y0;
        if !(0.0..bh).contains(&ly) {
            continue;
        }
        for px in span(x0, bw, w) {
            let lx = px as f32 + 0.5 - x0;
            if !(0.0..bw).contains(&lx) {
                continue;
            }
            let p = &mut out.y[py * w + px];
            match paint(lx, ly) {
                Paint::None => {}
                Paint::Colour(c) => *p = tone.luma(c[0], vig).clamp(0.0, 255.0) as u8,
                Paint::Shade(f) => *p = (f32::from(*p) * f) as u8,
            }
        }
    }
    let (cw, ch) = (out.chroma_width(), out.chroma_height());
    for cy in span(y0 / 2.0, bh / 2.0, ch) {
        let ly = (2 * cy) as f32 + 1.0 - y0;
        if !(0.0..bh).contains(&ly) {
            continue;
        }
        for cx in span(x0 / 2.0, bw / 2.0, cw) {
            let lx = (2 * cx) as f32 + 1.0 - x0;
            if !(0.0..bw).contains(&lx) {
                continue;
            }
            let i = cy * cw + cx;
            match paint(lx, ly) {
                Paint::None => {}
                Paint::Colour(c) => {
                    out.u[i] = tone.chroma(c[1]).clamp(0.0, 255.0) as u8;
                    out.v[i] = tone.chroma(c[2]).clamp(0.0, 255.0) as u8;
                }
                Paint::Shade(f) => {
                    let g = 0.5 + 0.5 * f;
                    out.u[i] = (128.0 + (f32::from(out.u[i]) - 128.0) * g) as u8;
                    out.v[i] = (128.0 + (f32::from(out.v[i]) - 128.0) * g) as u8;
                }
            }
        }
    }
}

/// Signed distance (pixels, negative inside) from `p` to a capsule `a`-`b` of radius `r`.
#[inline]
fn capsule(p: [f32; 2], a: [f32; 2], b: [f32; 2], r: f32) -> f32 {
    let (pax, pay) = (p[0] - a[0], p[1] - a[1]);
    let (bax, bay) = (b[0] - a[0], b[1] - a[1]);
    let len2 = bax * bax + bay * bay;
    let k = if len2 > 0.0 {
        ((pax * bax + pay * bay) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (pax - bax * k, pay - bay * k);
    (dx * dx + dy * dy).sqrt() - r
}

/// Approximate signed distance (pixels) to an axis-aligned ellipse.
#[inline]
fn ellipse(p: [f32; 2], c: [f32; 2], rx: f32, ry: f32) -> f32 {
    let (nx, ny) = ((p[0] - c[0]) / rx, (p[1] - c[1]) / ry);
    ((nx * nx + ny * ny).sqrt() - 1.0) * rx.min(ry)
}

/// Colour of a textured body part at signed distance `d` from its rim: rounded shading towards
/// the rim, grain that moves with the object, and a dark outline so the part casts an edge.
#[inline]
fn shade_part(base: [f32; 3], d: f32, depth: f32, grain: f32, edge: f32) -> Paint {
    let round = 0.72 + 0.28 * (-d / depth).min(1.0);
    let outline = if d > -edge { 0.6 } else { 1.0 };
    Paint::Colour([(base[0] + grain) * round * outline, base[1], base[2]])
}

/// The walk-cycle phase after moving `distance` pixels with one full cycle per `cycle` pixels.
fn phase(distance: f32, cycle: f32) -> f32 {
    std::f32::consts::TAU * distance / cycle.max(1.0)
}

/// Pixel distance covered along an event's track by time `t`.
fn travelled(event: &SceneEvent, t: f64, from: [f32; 2], to: [f32; 2], fw: f32, fh: f32) -> f32 {
    let (dx, dy) = ((to[0] - from[0]) * fw, (to[1] - from[1]) * fh);
    (dx * dx + dy * dy).sqrt() * event.progress(t)
}

const SHIRTS: [[f32; 3]; 7] = [
    [76.0, 90.0, 200.0],   // red
    [62.0, 178.0, 112.0],  // blue
    [205.0, 126.0, 130.0], // white
    [108.0, 100.0, 92.0],  // green
    [178.0, 52.0, 150.0],  // yellow
    [120.0, 128.0, 128.0], // grey
    [95.0, 150.0, 170.0],  // purple
];
const TROUSERS: [[f32; 3]; 4] = [
    [42.0, 150.0, 122.0],  // dark blue
    [28.0, 128.0, 128.0],  // black
    [140.0, 108.0, 136.0], // khaki
    [98.0, 128.0, 128.0],  // grey
];
const SKIN: [f32; 3] = [150.0, 110.0, 152.0];
const HAIR: [f32; 3] = [24.0, 128.0, 130.0];
const SHOES: [f32; 3] = [30.0, 126.0, 132.0];

/// A walking person in box-local pixels, at one instant.
struct Person {
    bw: f32,
    bh: f32,
    /// -1 when walking left: the figure is mirrored.
    facing: f32,
    shirt: [f32; 3],
    trousers: [f32; 3],
    stripe: f32,
    swing: f32,
    edge: f32,
    tex: u32,
}

impl Person {
    #[allow(clippy::too_many_arguments)]
    fn new(
        seed: u64,
        event: &SceneEvent,
        t: f64,
        from: [f32; 2],
        to: [f32; 2],
        bw: f32,
        bh: f32,
        fw: f32,
        fh: f32,
    ) -> Person {
        let mut rng = Rng::new(seed);
        let shirt = SHIRTS[rng.below(SHIRTS.len() as u32) as usize];
        let trousers = TROUSERS[rng.below(TROUSERS.len() as u32) as usize];
        let stripe = if rng.unit() < 0.5 {
            (bh * 0.05).max(1.5)
        } else {
            0.0
        };
        let moved = travelled(event, t, from, to, fw, fh);
        Person {
            bw,
            bh,
            facing: if to[0] < from[0] { -1.0 } else { 1.0 },
            shirt,
            trousers,
            stripe,
            swing: phase(moved, bh * 0.9).sin(),
            edge: (bh / 60.0).max(0.8),
            tex: rng.next_u64() as u32,
        }
    }

    fn paint(&self, lx: f32, ly: f32) -> Paint {
        let (bw, bh) = (self.bw, self.bh);
        // Mirror so the figure leads with the direction it walks.
        let x = if self.facing < 0.0 { bw - lx } else { lx };
        let p = [x, ly];
        let grain = |amp: f32| {
            let g = hash2((lx / 1.5) as i32, (ly / 1.5) as i32, self.tex);
            (f32::from(g) - 128.0) / 128.0 * amp
        };
        let head_r = (bh * 0.07).min(bw * 0.3);
        let head_c = [bw * 0.52, bh * 0.02 + head_r];
        let d = ellipse(p, head_c, head_r, head_r * 1.1);
        if d < 0.0 {
            // Hair on the crown and back of the head, face in front.
            let hair = ly < head_c[1] - head_r * 0.2 || x < head_c[0] - head_r * 0.3;
            let c = if hair { HAIR } else { SKIN };
            return shade_part(c, d, head_r, grain(8.0), self.edge);
        }
        let shoulder = bh * 0.2;
        let hand = bh * 0.47;
        let arm_r = bw * 0.08;
        let swing = self.swing * bw * 0.14;
        // The far arm is drawn behind the torso, the near one in front.
        let near_arm = capsule(p, [bw * 0.5, shoulder], [bw * 0.5 - swing, hand], arm_r);
        if near_arm < 0.0 {
            let sleeve = ly < bh * 0.33;
            let c = if sleeve { self.shirt } else { SKIN };
            return shade_part(c, near_arm, arm_r, grain(10.0), self.edge);
        }
        let torso = capsule(p, [bw * 0.5, bh * 0.2], [bw * 0.5, bh * 0.46], bw * 0.24);
        if torso < 0.0 {
            let stripes = if self.stripe > 0.0 && ((ly / self.stripe) as i32) % 2 == 0 {
                22.0
            } else {
                0.0
            };
            return shade_part(
                self.shirt,
                torso,
                bw * 0.24,
                stripes + grain(12.0),
                self.edge,
            );
        }
        let far_arm = capsule(p, [bw * 0.5, shoulder], [bw * 0.5 + swing, hand], arm_r);
        if far_arm < 0.0 {
            let c = if ly < bh * 0.33 { self.shirt } else { SKIN };
            return shade_part(c, far_arm, arm_r, grain(10.0) - 12.0, self.edge);
        }
        let hip = bh * 0.5;
        let foot = bh * 0.93;
        let leg_r = bw * 0.1;
        let stride = self.swing * bw * 0.28;
        for (sign, dim) in [(1.0, 0.0), (-1.0, -10.0)] {
            let d = capsule(p, [bw * 0.5, hip], [bw * 0.5 + sign * stride, foot], leg_r);
            if d < 0.0 {
                let c = if ly > bh * 0.9 { SHOES } else { self.trousers };
                return shade_part(c, d, leg_r, grain(8.0) + dim, self.edge);
            }
        }
        if ellipse(p, [bw * 0.5, bh * 0.965], bw * 0.48, bh * 0.03) < 0.0 {
            return Paint::Shade(0.65);
        }
        Paint::None
    }
}

const FUR: [[f32; 3]; 4] = [
    [100.0, 112.0, 146.0], // brown dog
    [36.0, 128.0, 128.0],  // black
    [190.0, 124.0, 132.0], // white
    [140.0, 92.0, 162.0],  // ginger cat
];

/// A trotting dog or cat in box-local pixels, at one instant.
struct Animal {
    bw: f32,
    bh: f32,
    facing: f32,
    fur: [f32; 3],
    swing: f32,
    edge: f32,
    tex: u32,
}

impl Animal {
    #[allow(clippy::too_many_arguments)]
    fn new(
        seed: u64,
        event: &SceneEvent,
        t: f64,
        from: [f32; 2],
        to: [f32; 2],
        bw: f32,
        bh: f32,
        fw: f32,
        fh: f32,
    ) -> Animal {
        let mut rng = Rng::new(seed);
        let moved = travelled(event, t, from, to, fw, fh);
        Animal {
            bw,
            bh,
            facing: if to[0] < from[0] { -1.0 } else { 1.0 },
            fur: FUR[rng.below(FUR.len() as u32) as usize],
            swing: phase(moved, bw * 0.8).sin(),
            edge: (bh / 30.0).max(0.6),
            tex: rng.next_u64() as u32,
        }
    }

    fn paint(&self, lx: f32, ly: f32) -> Paint {
        let (bw, bh) = (self.bw, self.bh);
        let x = if self.facing < 0.0 { bw - lx } else { lx };
        let p = [x, ly];
        let grain = {
            let g = hash2(lx as i32, ly as i32, self.tex);
            (f32::from(g) - 128.0) / 128.0 * 16.0
        };
        let head_r = bh * 0.2;
        let d = ellipse(p, [bw * 0.84, bh * 0.28], head_r * 1.2, head_r);
        if d < 0.0 {
            return shade_part(self.fur, d, head_r, grain + 8.0, self.edge);
        }
        let d = ellipse(p, [bw * 0.5, bh * 0.44], bw * 0.32, bh * 0.22);
        if d < 0.0 {
            return shade_part(self.fur, d, bh * 0.22, grain, self.edge);
        }
        let tail = capsule(p, [bw * 0.2, bh * 0.38], [bw * 0.05, bh * 0.12], bw * 0.03);
        if tail < 0.0 {
            return shade_part(self.fur, tail, bw * 0.03, grain, self.edge);
        }
        let leg_r = bw * 0.045;
        let swing = self.swing * bw * 0.06;
        for (i, hip) in [0.28f32, 0.36, 0.62, 0.7].into_iter().enumerate() {
            let s = if i % 2 == 0 { swing } else { -swing };
            let d = capsule(p, [bw * hip, bh * 0.5], [bw * hip + s, bh * 0.88], leg_r);
            if d < 0.0 {
                return shade_part(self.fur, d, leg_r, grain - 10.0, self.edge);
            }
        }
        if ellipse(p, [bw * 0.5, bh * 0.94], bw * 0.4, bh * 0.05) < 0.0 {
            return Paint::Shade(0.7);
        }
        Paint::None
    }
}

/// Slanted bright streaks, new ones every frame.
fn rain(out: &mut YuvFrame, rng: &mut Rng, intensity: f32) {
    let (w, h) = (out.width as usize, out.height as usize);
    // Streaks scale with the picture's height, so their number scales with its width alone: the
    // same rain covers the same fraction of the picture at any resolution.
    let count = (intensity * w as f32 * 0.6) as u32;
    let scale = h as f32 / 1080.0;
    let thick = (scale * 1.5).round().max(1.0) as usize;
    for _ in 0..count {
        let len = (h as f32 * 0.03 * rng.range(0.6, 1.4)).max(3.0);
        let x0 = rng.range(0.0, w as f32 + len * 0.25);
        let y0 = rng.range(-len, h as f32);
        let gain = rng.range(18.0, 45.0);
        for i in 0..len as usize {
            let y = y0 + i as f32;
            let x = x0 - i as f32 * 0.25;
            if y < 0.0 || y >= h as f32 || x < 0.0 {
                continue;
            }
            let (y, x) = (y as usize, x as usize);
            for dx in 0..thick {
                if let Some(p) = out.y.get_mut(y * w + (x + dx).min(w - 1)) {
                    *p = (f32::from(*p) + gain).min(255.0) as u8;
                }
            }
        }
    }
}

/// Soft white flakes of a few sizes, new ones every frame.
fn snow(out: &mut YuvFrame, rng: &mut Rng, intensity: f32) {
    let (w, h) = (out.width as usize, out.height as usize);
    let cw = out.chroma_width();
    let scale = h as f32 / 1080.0;
    // Flakes shrink with the picture but not below a pixel: pick their number so that full
    // intensity covers about 1.2 % of the picture at any resolution.
    let mean_r = (scale * 2.25).max(0.7);
    let count =
        (intensity * (w * h) as f32 * 0.012 / (std::f32::consts::PI * mean_r * mean_r)) as u32;
    for _ in 0..count {
        let r = (scale * rng.range(1.0, 3.5)).max(0.7);
        let cx = rng.range(0.0, w as f32);
        let cy = rng.range(0.0, h as f32);
        let strength = rng.range(0.6, 0.9);
        let ri = r.ceil() as i64;
        for dy in -ri..=ri {
            for dx in -ri..=ri {
                let (x, y) = (cx as i64 + dx, cy as i64 + dy);
                if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                    continue;
                }
                let d2 = (dx * dx + dy * dy) as f32;
                if d2 > r * r {
                    continue;
                }
                let p = &mut out.y[y as usize * w + x as usize];
                *p = (f32::from(*p) + (235.0 - f32::from(*p)) * strength) as u8;
            }
        }
        if r >= 1.5 {
            let i = (cy as usize / 2) * cw + cx as usize / 2;
            if let (Some(u), Some(v)) = (out.u.get(i).copied(), out.v.get(i).copied()) {
                out.u[i] = ((u16::from(u) + 128) / 2) as u8;
                out.v[i] = ((u16::from(v) + 128) / 2) as u8;
            }
        }
    }
}

/// Pre-drawn Gaussian samples; each row of a frame reads them from a random offset, which costs
/// one add per pixel instead of a PRNG draw per pixel.
#[derive(Default)]
struct NoiseTable {
    /// Sigma in quarter levels the table was drawn for, and the row width it covers.
    key: Option<(u32, usize)>,
    data: Vec<i8>,
}

const NOISE_TABLE: usize = 1 << 18;

impl NoiseTable {
    fn prepare(&mut self, seed: u64, sigma: f32, width: usize) {
        let q = (sigma * 4.0).round() as u32;
        if self.key == Some((q, width)) {
            return;
        }
        self.key = Some((q, width));
        self.data.clear();
        if q == 0 {
            return;
        }
        let sigma = q as f32 / 4.0;
        let mut rng = Rng::new(derive(seed, 0x0015_e000 + u64::from(q)));
        self.data.extend(
            (0..NOISE_TABLE + width)
                .map(|_| (rng.normal() * sigma).round().clamp(-127.0, 127.0) as i8),
        );
    }

    fn apply(&self, plane: &mut [u8], w: usize, h: usize, rng: &mut Rng) {
        if self.data.len() < NOISE_TABLE + w {
            return;
        }
        for row in plane.chunks_exact_mut(w).take(h) {
            let off = rng.below(NOISE_TABLE as u32) as usize;
            for (p, n) in row.iter_mut().zip(&self.data[off..off + w]) {
                *p = p.saturating_add_signed(*n);
            }
        }
    }
}

/// A full-resolution YUV 4:4:4 canvas the background is painted on before chroma subsampling.
struct Canvas {
    w: usize,
    h: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            y: vec![0; w * h],
            u: vec![128; w * h],
            v: vec![128; w * h],
        }
    }

    #[inline]
    fn put(&mut self, x: usize, y: usize, c: [f32; 3]) {
        let i = y * self.w + x;
        self.y[i] = c[0].clamp(0.0, 255.0) as u8;
        self.u[i] = c[1].clamp(0.0, 255.0) as u8;
        self.v[i] = c[2].clamp(0.0, 255.0) as u8;
    }

    /// Paints `f(x, y)` over the pixel rectangle `[x0, x1) × [y0, y1)` (clipped); `None` keeps
    /// what is there.
    fn rect(
        &mut self,
        x0: i64,
        y0: i64,
        x1: i64,
        y1: i64,
        mut f: impl FnMut(usize, usize) -> Option<[f32; 3]>,
    ) {
        let cx = |v: i64| v.clamp(0, self.w as i64) as usize;
        let cy = |v: i64| v.clamp(0, self.h as i64) as usize;
        let (x0, x1, y0, y1) = (cx(x0), cx(x1), cy(y0), cy(y1));
        for y in y0..y1 {
            for x in x0..x1 {
                if let Some(c) = f(x, y) {
                    self.put(x, y, c);
                }
            }
        }
    }

    /// Box-filters the chroma down to 4:2:0.
    fn into_frame(self) -> YuvFrame {
        let (w, h) = (self.w, self.h);
        let mut out = YuvFrame::new(w as u32, h as u32);
        let cw = out.chroma_width();
        out.y.copy_from_slice(&self.y);
        for (src, dst) in [(&self.u, &mut out.u), (&self.v, &mut out.v)] {
            for (i, d) in dst.iter_mut().enumerate() {
                let (cx, cy) = (i % cw, i / cw);
                let (x0, y0) = (2 * cx, 2 * cy);
                let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
                let sum = u32::from(src[y0 * w + x0])
                    + u32::from(src[y0 * w + x1])
                    + u32::from(src[y1 * w + x0])
                    + u32::from(src[y1 * w + x1]);
                *d = ((sum + 2) / 4) as u8;
            }
        }
        out
    }
}

/// Signed texture in `-amp..amp` from a lattice hash.
#[inline]
fn grain(x: usize, y: usize, seed: u32, amp: f32) -> f32 {
    (f32::from(hash2(x as i32, y as i32, seed)) - 128.0) / 128.0 * amp
}

/// Smooth signed texture in `-amp..amp` with features about `cell` pixels across.
#[inline]
fn blotch(x: usize, y: usize, cell: i32, seed: u32, amp: f32) -> f32 {
    (value_noise(x as i32, y as i32, cell.max(2), seed) - 128.0) / 128.0 * amp
}

const WALLS: [[f32; 3]; 5] = [
    [200.0, 126.0, 130.0], // white tile
    [150.0, 127.0, 129.0], // grey concrete
    [108.0, 116.0, 158.0], // red brick
    [182.0, 104.0, 140.0], // yellow plaster
    [165.0, 120.0, 136.0], // pale pink render
];

/// Generates the static street picture for `spec` from its seed.
fn street(spec: &SceneSpec) -> YuvFrame {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let (fw, fh) = (w as f32, h as f32);
    let mut rng = Rng::new(derive(spec.seed, 0xb0));
    let tex = rng.next_u64() as u32;
    let mut c = Canvas::new(w, h);
    let px = |v: f32| v.round() as i64;
    let ground = fh * 0.56;
    let kerb = fh * 0.625;
    let road = fh * 0.637;

    // Sky with faint cloud texture.
    let sky_cell = (fw * 0.08) as i32;
    c.rect(0, 0, w as i64, px(ground), |x, y| {
        let k = y as f32 / ground;
        let cloud = blotch(x, y, sky_cell, tex ^ 1, 10.0).max(0.0);
        Some([
            165.0 + 40.0 * k + cloud,
            145.0 - 11.0 * k - cloud * 0.5,
            112.0 + 10.0 * k,
        ])
    });
    // Hills behind the village: a ragged silhouette.
    let hill_cell = (fw * 0.12) as i32;
    let leaf_cell = (fh * 0.01) as i32;
    c.rect(0, px(fh * 0.2), w as i64, px(ground), |x, y| {
        let top = fh * 0.27 + blotch(x, 0, hill_cell, tex ^ 2, fh * 0.06);
        (y as f32 >= top).then(|| {
            [
                118.0 + blotch(x, y, leaf_cell, tex ^ 3, 12.0) + grain(x, y, tex ^ 4, 5.0),
                121.0,
                121.0,
            ]
        })
    });

    // Buildings along the far side of the street, with gaps where trees stand.
    let mut gaps = Vec::new();
    let mut x = -fw * rng.range(0.0, 0.05);
    while x < fw {
        let bw = fw * rng.range(0.09, 0.2);
        let top = fh * rng.range(0.14, 0.36);
        building(&mut c, &mut rng, x, x + bw, top, ground);
        x += bw;
        if rng.unit() < 0.35 {
            let gap = fw * rng.range(0.03, 0.07);
            gaps.push(x + gap / 2.0);
            x += gap;
        }
    }
    if gaps.is_empty() {
        gaps.push(fw * rng.range(0.2, 0.8));
    }

    // Trees in the gaps: trunk, then a lumpy leafy canopy.
    for gx in gaps {
        let r = fw * rng.range(0.035, 0.055);
        let cy = ground - fh * rng.range(0.1, 0.16);
        let trunk = (fw * 0.006).max(1.0);
        let bark = rng.next_u64() as u32;
        c.rect(
            px(gx - trunk),
            px(cy),
            px(gx + trunk),
            px(ground),
            |x, y| Some([60.0 + grain(x, y, bark, 12.0), 122.0, 136.0]),
        );
        let leaves = rng.next_u64() as u32;
        let lump = (r * 0.35) as i32;
        c.rect(
            px(gx - r * 1.2),
            px(cy - r * 1.2),
            px(gx + r * 1.2),
            px(cy + r),
            |x, y| {
                let (dx, dy) = (x as f32 - gx, y as f32 - cy);
                let edge = r * (1.0 + blotch(x, y, lump, leaves, 0.25));
                (dx * dx + dy * dy < edge * edge).then(|| {
                    [
                        78.0 + grain(x / 2, y / 2, leaves, 26.0)
                            + blotch(x, y, lump, leaves ^ 5, 14.0)
                            - dy / r * 10.0,
                        108.0,
                        112.0,
                    ]
                })
            },
        );
    }

    // A concrete pole with sagging wires between it and its neighbours off-frame.
    let pole_x = fw * rng.range(0.55, 0.8);
    let pole_w = (fw * 0.004).max(1.0);
    let pole_top = fh * 0.1;
    c.rect(
        px(pole_x - pole_w),
        px(pole_top),
        px(pole_x + pole_w),
        px(ground + fh * 0.03),
        |x, y| {
            let lit = if (x as f32) < pole_x { 12.0 } else { -12.0 };
            Some([150.0 + lit + grain(x, y, tex ^ 6, 6.0), 128.0, 128.0])
        },
    );
    let span = fw * 0.7;
    let wire = (fh / 720.0).round().max(1.0) as i64;
    for k in 0..3 {
        let y_top = pole_top + fh * 0.012 * (k as f32 + 1.0);
        let sag = fh * (0.04 + 0.01 * k as f32);
        for x in 0..w {
            let u = ((x as f32 - pole_x) / span).rem_euclid(1.0);
            let y = px(y_top + sag * 4.0 * u * (1.0 - u));
            c.rect(x as i64, y, x as i64 + 1, y + wire, |_, _| {
                Some([35.0, 128.0, 128.0])
            });
        }
    }

    // Footpath tiles, kerb, road with an edge line and a dashed yellow centre line.
    let tile_w = (fw * 0.035).max(4.0) as usize;
    let tile_h = (fh * 0.02).max(3.0) as usize;
    let grout = (fh / 540.0).max(1.0) as usize;
    c.rect(0, px(ground), w as i64, px(kerb), |x, y| {
        let row = (y - ground as usize) / tile_h;
        let xs = x + row * tile_w / 2;
        let line = xs % tile_w < grout || (y - ground as usize) % tile_h < grout;
        let tile = f32::from(hash2((xs / tile_w) as i32, row as i32, tex ^ 7)) / 255.0 * 14.0;
        Some([
            if line { 118.0 } else { 152.0 + tile } + grain(x, y, tex ^ 8, 6.0),
            124.0,
            133.0,
        ])
    });
    c.rect(0, px(kerb), w as i64, px(road), |x, y| {
        Some([196.0 + grain(x, y, tex ^ 9, 8.0), 127.0, 129.0])
    });
    let patch_cell = (fw * 0.05) as i32;
    let edge_line = (fh * 0.655, fh * 0.661);
    let centre = (fh * 0.805, fh * 0.813);
    let dash = fw * 0.07;
    let dash_gap = fw * 0.05;
    c.rect(0, px(road), w as i64, h as i64, |x, y| {
        let (xf, yf) = (x as f32, y as f32);
        let wear = blotch(x, y, (fh * 0.004) as i32, tex ^ 12, 8.0);
        if (edge_line.0..edge_line.1).contains(&yf) {
            return Some([200.0 + wear, 127.0, 129.0]);
        }
        if (centre.0..centre.1).contains(&yf) && xf.rem_euclid(dash + dash_gap) < dash {
            return Some([168.0 + wear, 78.0, 150.0]);
        }
        let patch = blotch(x, y, patch_cell, tex ^ 10, 14.0);
        let patch = if patch > 7.0 { -10.0 } else { 0.0 };
        // Asphalt lightens a little towards the camera, as it does in daylight.
        let near = (yf - road) / (fh - road) * 10.0;
        Some([
            86.0 + near + patch + grain(x, y, tex ^ 11, 12.0) + wear * 0.5,
            127.0,
            129.0,
        ])
    });
    c.into_frame()
}

/// One building front from `x0` to `x1` (pixels, may reach outside the frame), roof at `top`,
/// standing on `ground`: wall, roof edge, windows per floor, a door and sometimes a shop front.
fn building(c: &mut Canvas, rng: &mut Rng, x0: f32, x1: f32, top: f32, ground: f32) {
    let (fw, fh) = (c.w as f32, c.h as f32);
    let px = |v: f32| v.round() as i64;
    let wall = WALLS[rng.below(WALLS.len() as u32) as usize];
    let tex = rng.next_u64() as u32;
    let stain_cell = (fh * 0.03) as i32;
    c.rect(px(x0), px(top), px(x1), px(ground), |x, y| {
        // Weathering runs down from the roof.
        let stain = blotch(x, y / 3, stain_cell, tex, 14.0).min(0.0);
        Some([
            wall[0] + stain + grain(x, y, tex ^ 1, 7.0),
            wall[1],
            wall[2],
        ])
    });
    let roof = (fh * 0.012).max(1.0);
    let eave = fw * 0.004;
    c.rect(
        px(x0 - eave),
        px(top - roof),
        px(x1 + eave),
        px(top + roof),
        |x, y| Some([52.0 + grain(x, y, tex ^ 2, 8.0), 126.0, 130.0]),
    );

    let floor_h = fh * 0.075;
    let cell_w = fw * 0.045;
    let cols = ((x1 - x0) / cell_w).floor().max(1.0) as usize;
    let margin = ((x1 - x0) - cols as f32 * cell_w) / 2.0;
    let floors = (((ground - top - roof) / floor_h).floor().max(1.0)) as usize;
    let shop = rng.unit() < 0.5;
    let door_col = rng.below(cols as u32) as usize;
    let frame_px = (fh / 540.0).max(1.0);
    for f in 0..floors {
        let fy1 = ground - f as f32 * floor_h;
        let fy0 = fy1 - floor_h;
        for col in 0..cols {
            let cx0 = x0 + margin + col as f32 * cell_w;
            let cx1 = cx0 + cell_w;
            let id = rng.next_u64() as u32;
            if f == 0 && col == door_col {
                let (dx0, dx1) = (cx0 + cell_w * 0.25, cx1 - cell_w * 0.25);
                c.rect(
                    px(dx0),
                    px(fy0 + floor_h * 0.2),
                    px(dx1),
                    px(fy1),
                    |x, y| {
                        let panel = if (x as f32 - dx0) < frame_px * 1.5 {
                            -15.0
                        } else {
                            0.0
                        };
                        Some([58.0 + panel + grain(x, y, id, 6.0), 118.0, 142.0])
                    },
                );
                continue;
            }
            if f == 0 && shop {
                // A rolling steel shutter: horizontal ribs.
                let rib = (fh * 0.006).max(2.0) as usize;
                c.rect(
                    px(cx0 + frame_px),
                    px(fy0 + floor_h * 0.25),
                    px(cx1 - frame_px),
                    px(fy1),
                    |x, y| {
                        let r = if (y / rib).is_multiple_of(2) {
                            14.0
                        } else {
                            -6.0
                        };
                        Some([150.0 + r + grain(x, y, id, 4.0), 127.0, 127.0])
                    },
                );
                continue;
            }
            // A window: light frame, dark glass with a reflection gradient, maybe curtains.
            let (wx0, wx1) = (cx0 + cell_w * 0.22, cx1 - cell_w * 0.22);
            let (wy0, wy1) = (fy0 + floor_h * 0.25, fy1 - floor_h * 0.3);
            let curtain = id.is_multiple_of(3);
            c.rect(px(wx0), px(wy0), px(wx1), px(wy1), |x, y| {
                let (xf, yf) = (x as f32, y as f32);
                let border = xf - wx0 < frame_px
                    || wx1 - xf <= frame_px
                    || yf - wy0 < frame_px
                    || wy1 - yf <= frame_px
                    || (xf - (wx0 + wx1) / 2.0).abs() < frame_px / 2.0;
                if border {
                    return Some([215.0, 127.0, 128.0]);
                }
                let k = (yf - wy0) / (wy1 - wy0);
                if curtain && k < 0.5 {
                    return Some([150.0 + grain(x, y, id, 10.0), 140.0, 110.0]);
                }
                Some([48.0 + 30.0 * (1.0 - k) + grain(x, y, id, 4.0), 136.0, 122.0])
            });
        }
    }
    if shop {
        // A red shop sign with yellow characters above the ground floor.
        let (sy0, sy1) = (ground - floor_h * 1.02, ground - floor_h * 0.78);
        let glyph = ((sy1 - sy0) * 0.7).max(2.0);
        let sign = rng.next_u64() as u32;
        c.rect(
            px(x0 + cell_w * 0.2),
            px(sy0),
            px(x1 - cell_w * 0.2),
            px(sy1),
            |x, y| {
                let (gx, gy) = (
                    (x as f32 / glyph) as i32,
                    ((y as f32 - sy0) / (glyph / 3.0)) as i32,
                );
                let stroke = hash2(gx * 3 + (x as i32 % 3), gy, sign) > 150;
                let inside =
                    (y as f32 - sy0) > (sy1 - sy0) * 0.15 && (sy1 - y as f32) > (sy1 - sy0) * 0.15;
                Some(if stroke && inside {
                    [180.0, 52.0, 152.0]
                } else {
                    [70.0, 100.0, 200.0]
                })
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_copy_moves_and_smears_edges() {
        let src: Vec<u8> = (0..12).collect(); // 4 × 3
        let mut dst = vec![0; 12];
        shift_copy(&src, &mut dst, 4, 3, 1, 0);
        assert_eq!(&dst[..4], &[0, 0, 1, 2]);
        shift_copy(&src, &mut dst, 4, 3, -2, 1);
        assert_eq!(&dst[..4], &[2, 3, 3, 3]);
        assert_eq!(&dst[4..8], &[2, 3, 3, 3]);
        assert_eq!(&dst[8..], &[6, 7, 7, 7]);
    }

    #[test]
    fn noise_table_has_the_asked_spread() {
        let mut t = NoiseTable::default();
        t.prepare(1, 4.0, 64);
        let n = t.data.len() as f64;
        let var = t.data.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / n;
        assert!((var.sqrt() - 4.0).abs() < 0.2, "sigma {}", var.sqrt());
    }

    #[test]
    fn odd_sizes_render() {
        let mut spec = SceneSpec::preset("demo", 33, 19, 5).unwrap();
        spec.validate().unwrap();
        spec.seed = 3;
        let mut r = Renderer::new(&spec).unwrap();
        let f = r.render(24 * 5);
        assert_eq!((f.y.len(), f.u.len()), (33 * 19, 17 * 10));
    }
}
