//! Synthetic camera scenes: what a scene is ([`SceneSpec`], its events and named presets), the
//! deterministic YUV 4:2:0 renderer, and the ground truth a motion detector is scored against.
//!
//! A scene is a fixed village street picture generated from `seed` (sky, buildings with
//! windows, trees, a pole with wires, a footpath and a road with lane markings), plus scripted
//! events: people and small animals crossing, lighting steps, headlight pools, the day/night IR
//! switch, rain, snow, extra sensor noise, camera shake and drifting cloud shadows. Every frame
//! is a pure function of the spec and the frame index (per-frame noise comes from a seeded
//! PRNG, never from the OS), so a test, an encoder and a detector evaluation all see the same
//! pictures. The scene loops: frame `i` shows time `(i mod frame_count) / fps`.
//!
//! Only [`SceneEvent::PersonCrossing`] is real motion that must raise an alarm. Everything else
//! is a nuisance a detector must ride out: a small animal, light changes, weather, noise, shake.
//!
//! # Coordinates and timing
//! Positions and sizes are normalised to the frame: `(0, 0)` is the top-left corner, `(1, 1)`
//! the bottom-right; `size` is `[width, height]` as fractions of the frame's width and height.
//! An event is active for `start_s <= t < end_s`. A state event (lighting step, IR switch) holds
//! for that span and reverts at `end_s`; when `end_s` is the loop length the revert happens at
//! the loop's wrap, which a looping stream shows as one more step.
//!
//! # Ground truth format (`format: 1`)
//! [`ground_truth`] describes a spec as JSON (`serde_json::to_string_pretty` or
//! [`GroundTruth::to_json`]):
//! ```json
//! {
//!   "format": 1,
//!   "width": 1280, "height": 720, "fps": 25,
//!   "duration_s": 60.0, "frame_count": 1500, "seed": 7, "night": false,
//!   "events": [
//!     {
//!       "index": 0,
//!       "kind": "person_crossing",
//!       "start_s": 20.0, "end_s": 28.0,
//!       "start_frame": 500, "end_frame": 700,
//!       "real_motion": true,
//!       "box_start": { "x": -0.0425, "y": 0.69, "w": 0.025, "h": 0.08 },
//!       "box_end": { "x": 1.0175, "y": 0.67, "w": 0.025, "h": 0.08 }
//!     }
//!   ]
//! }
//! ```
//! * `index` is the event's position in the spec's `events`; `kind` is one of the snake_case
//!   names of [`EventKind`].
//! * `start_frame` is the first frame index in the loop showing the event, `end_frame` the first
//!   one that no longer does (exclusive).
//! * `real_motion` is true only for events that must alarm (people).
//! * `box_start` / `box_end` (moving events only: person, animal, headlight pool, cloud shadow;
//!   absent otherwise) are the object's bounding box `{x, y, w, h}` (top-left corner and size,
//!   normalised) at `start_s` and at `end_s`. Objects move in a straight line at constant speed,
//!   so the box at time `t` is the linear interpolation between the two
//!   ([`TruthEvent::box_at`]). A box may reach outside `0..1` while the object enters or leaves
//!   the frame; `box_at` returns the visible part. The rendered object (its outline and the
//!   shadow at its feet included) stays inside the box; camera shake moves the whole picture,
//!   objects with it, by up to the shake amplitude.

mod render;
mod rng;

use serde::{Deserialize, Serialize};

use crate::SimError;

pub use render::{Renderer, YuvFrame, render};

/// A point in normalised frame coordinates, `[x, y]`.
pub type Point = [f32; 2];

/// Version of the ground-truth JSON layout; bumped on any incompatible change.
pub const GROUND_TRUTH_FORMAT: u32 = 1;

/// The names [`SceneSpec::preset`] knows.
pub const PRESETS: &[&str] = &[
    "street",
    "person_crossing",
    "small_animal",
    "lighting_step",
    "headlight_sweep",
    "ir_switch",
    "rain",
    "snow",
    "night_noise",
    "camera_shake",
    "cloud_shadow",
    "demo",
];

/// A synthetic scene: picture size, frame rate, loop length, seed and scripted events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneSpec {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Loop length in seconds; the loop has [`SceneSpec::frame_count`] frames.
    pub duration_s: f64,
    /// Picks the street layout, colours, object textures and the noise sequence.
    pub seed: u64,
    /// Start (and, outside [`SceneEvent::IrSwitch`] spans, stay) in IR night mode: greyscale,
    /// dim, vignetted by the IR illuminator, noisier.
    #[serde(default)]
    pub night: bool,
    #[serde(default)]
    pub events: Vec<SceneEvent>,
}

/// One scripted event; active for `start_s <= t < end_s` (seconds from the loop's start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SceneEvent {
    /// A walking person, textured clothes and swinging legs, centre moving from `from` to `to`.
    /// Real motion: must alarm.
    PersonCrossing {
        start_s: f64,
        end_s: f64,
        from: Point,
        to: Point,
        /// Bounding box size; a person at village-street distance is 5-10 % of the frame's
        /// height tall and 2-4 % of its width wide.
        #[serde(default = "person_size")]
        size: Point,
    },
    /// A dog or cat trotting from `from` to `to`, 1-2 % of the frame. Must not alarm.
    SmallAnimal {
        start_s: f64,
        end_s: f64,
        from: Point,
        to: Point,
        #[serde(default = "animal_size")]
        size: Point,
    },
    /// A light switched on (positive `delta`) or off: every luma sample moves by `delta`
    /// during the span. Must not alarm.
    LightingStep {
        start_s: f64,
        end_s: f64,
        delta: i16,
    },
    /// A passing car's headlight pool: a bright soft ellipse of `size` sliding over the road.
    /// `gain` is the luma added at its centre. Must not alarm.
    HeadlightSweep {
        start_s: f64,
        end_s: f64,
        from: Point,
        to: Point,
        #[serde(default = "headlight_size")]
        size: Point,
        #[serde(default = "headlight_gain")]
        gain: f32,
    },
    /// The camera's day/night switch: during the span the picture is in IR night mode when
    /// `to_night` (chroma neutral 128, luma dimmer and vignetted, noise up), in day mode
    /// otherwise. Must not alarm.
    IrSwitch {
        start_s: f64,
        end_s: f64,
        to_night: bool,
    },
    /// Rain streaks, re-drawn at random every frame; `intensity` in `0..=1`. Must not alarm.
    Rain {
        start_s: f64,
        end_s: f64,
        intensity: f32,
    },
    /// Snowflakes, re-drawn at random every frame; `intensity` in `0..=1`. Must not alarm.
    Snow {
        start_s: f64,
        end_s: f64,
        intensity: f32,
    },
    /// Extra Gaussian sensor noise of standard deviation `sigma` (luma levels), on top of the
    /// camera's own. Must not alarm.
    SensorNoise {
        start_s: f64,
        end_s: f64,
        sigma: f32,
    },
    /// The pole sways: the picture shifts by up to `amplitude_px` pixels at `frequency_hz`.
    /// Must not alarm.
    CameraShake {
        start_s: f64,
        end_s: f64,
        amplitude_px: f32,
        frequency_hz: f32,
    },
    /// A large soft dark blob drifting across the scene; `depth` in `0..=1` is the fraction of
    /// light lost at its centre. Must not alarm.
    CloudShadow {
        start_s: f64,
        end_s: f64,
        from: Point,
        to: Point,
        #[serde(default = "cloud_size")]
        size: Point,
        #[serde(default = "cloud_depth")]
        depth: f32,
    },
}

/// The kind of a [`SceneEvent`], as named in specs and ground truth.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    PersonCrossing,
    SmallAnimal,
    LightingStep,
    HeadlightSweep,
    IrSwitch,
    Rain,
    Snow,
    SensorNoise,
    CameraShake,
    CloudShadow,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PersonCrossing => "person_crossing",
            EventKind::SmallAnimal => "small_animal",
            EventKind::LightingStep => "lighting_step",
            EventKind::HeadlightSweep => "headlight_sweep",
            EventKind::IrSwitch => "ir_switch",
            EventKind::Rain => "rain",
            EventKind::Snow => "snow",
            EventKind::SensorNoise => "sensor_noise",
            EventKind::CameraShake => "camera_shake",
            EventKind::CloudShadow => "cloud_shadow",
        }
    }

    /// Whether a detector must alarm on this kind of event.
    pub fn real_motion(self) -> bool {
        matches!(self, EventKind::PersonCrossing)
    }
}

fn person_size() -> Point {
    [0.025, 0.08]
}
fn animal_size() -> Point {
    [0.02, 0.014]
}
fn headlight_size() -> Point {
    [0.3, 0.12]
}
fn headlight_gain() -> f32 {
    110.0
}
fn cloud_size() -> Point {
    [0.8, 1.2]
}
fn cloud_depth() -> f32 {
    0.35
}

/// A box in normalised coordinates: top-left corner `(x, y)` and size `(w, h)`.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl NormBox {
    fn around(centre: Point, size: Point) -> NormBox {
        NormBox {
            x: centre[0] - size[0] / 2.0,
            y: centre[1] - size[1] / 2.0,
            w: size[0],
            h: size[1],
        }
    }

    /// Rounded to 1e-5 (a hundredth of a pixel at 1080p), so JSON shows `1.0175`, not the
    /// f32 arithmetic's `1.0174999`.
    fn rounded(self) -> NormBox {
        let r = |v: f32| ((f64::from(v) * 1e5).round() / 1e5) as f32;
        NormBox {
            x: r(self.x),
            y: r(self.y),
            w: r(self.w),
            h: r(self.h),
        }
    }

    /// The part inside the frame, if any.
    pub fn clipped(&self) -> Option<NormBox> {
        let x0 = self.x.max(0.0);
        let y0 = self.y.max(0.0);
        let x1 = (self.x + self.w).min(1.0);
        let y1 = (self.y + self.h).min(1.0);
        (x1 > x0 && y1 > y0).then_some(NormBox {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        })
    }

    /// Whether the normalised point lies inside.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        x >= self.x && x < self.x + self.w && y >= self.y && y < self.y + self.h
    }

    /// The box grown by `dx`, `dy` on every side.
    pub fn expanded(&self, dx: f32, dy: f32) -> NormBox {
        NormBox {
            x: self.x - dx,
            y: self.y - dy,
            w: self.w + 2.0 * dx,
            h: self.h + 2.0 * dy,
        }
    }
}

impl SceneEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            SceneEvent::PersonCrossing { .. } => EventKind::PersonCrossing,
            SceneEvent::SmallAnimal { .. } => EventKind::SmallAnimal,
            SceneEvent::LightingStep { .. } => EventKind::LightingStep,
            SceneEvent::HeadlightSweep { .. } => EventKind::HeadlightSweep,
            SceneEvent::IrSwitch { .. } => EventKind::IrSwitch,
            SceneEvent::Rain { .. } => EventKind::Rain,
            SceneEvent::Snow { .. } => EventKind::Snow,
            SceneEvent::SensorNoise { .. } => EventKind::SensorNoise,
            SceneEvent::CameraShake { .. } => EventKind::CameraShake,
            SceneEvent::CloudShadow { .. } => EventKind::CloudShadow,
        }
    }

    /// `(start_s, end_s)`.
    pub fn span(&self) -> (f64, f64) {
        match *self {
            SceneEvent::PersonCrossing { start_s, end_s, .. }
            | SceneEvent::SmallAnimal { start_s, end_s, .. }
            | SceneEvent::LightingStep { start_s, end_s, .. }
            | SceneEvent::HeadlightSweep { start_s, end_s, .. }
            | SceneEvent::IrSwitch { start_s, end_s, .. }
            | SceneEvent::Rain { start_s, end_s, .. }
            | SceneEvent::Snow { start_s, end_s, .. }
            | SceneEvent::SensorNoise { start_s, end_s, .. }
            | SceneEvent::CameraShake { start_s, end_s, .. }
            | SceneEvent::CloudShadow { start_s, end_s, .. } => (start_s, end_s),
        }
    }

    /// Whether the event shows at time `t` (seconds into the loop).
    pub fn active_at(&self, t: f64) -> bool {
        let (s, e) = self.span();
        s <= t && t < e
    }

    /// Fraction of the span elapsed at `t`, in `0..=1`.
    fn progress(&self, t: f64) -> f32 {
        let (s, e) = self.span();
        (((t - s) / (e - s)).clamp(0.0, 1.0)) as f32
    }

    /// `(from, to, size)` of a moving event.
    fn track(&self) -> Option<(Point, Point, Point)> {
        match *self {
            SceneEvent::PersonCrossing { from, to, size, .. }
            | SceneEvent::SmallAnimal { from, to, size, .. }
            | SceneEvent::HeadlightSweep { from, to, size, .. }
            | SceneEvent::CloudShadow { from, to, size, .. } => Some((from, to, size)),
            _ => None,
        }
    }

    /// Centre of a moving event at time `t` (clamped to its span).
    fn centre_at(&self, t: f64) -> Option<Point> {
        let (from, to, _) = self.track()?;
        let p = self.progress(t);
        Some([
            from[0] + (to[0] - from[0]) * p,
            from[1] + (to[1] - from[1]) * p,
        ])
    }

    /// The unclipped bounding box of a moving event at time `t` (clamped to its span).
    pub fn box_at(&self, t: f64) -> Option<NormBox> {
        let (_, _, size) = self.track()?;
        Some(NormBox::around(self.centre_at(t)?, size))
    }

    fn validate(&self, index: usize, duration_s: f64) -> Result<(), String> {
        let name = self.kind().as_str();
        let bad = |what: String| format!("event {index} ({name}): {what}");
        let (s, e) = self.span();
        if !(s.is_finite() && e.is_finite()) || s < 0.0 || e <= s {
            return Err(bad(format!(
                "needs 0 <= start_s < end_s, got start_s {s}, end_s {e}"
            )));
        }
        if e > duration_s + 1e-9 {
            return Err(bad(format!(
                "end_s {e} is past the loop's end (duration_s {duration_s})"
            )));
        }
        if let Some((from, to, size)) = self.track() {
            if from
                .iter()
                .chain(&to)
                .any(|c| !c.is_finite() || c.abs() > 4.0)
            {
                return Err(bad("from/to must be finite and within -4..=4".into()));
            }
            if size.iter().any(|c| !(*c > 0.0 && *c <= 4.0)) {
                return Err(bad(format!("size {size:?} must be within (0, 4]")));
            }
        }
        let in_range = |what: &str, v: f32, lo: f32, hi: f32| {
            if v.is_finite() && (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(format!("{what} {v} is outside {lo}..={hi}")))
            }
        };
        match *self {
            SceneEvent::LightingStep { delta, .. } => {
                in_range("delta", f32::from(delta), -255.0, 255.0)
            }
            SceneEvent::HeadlightSweep { gain, .. } => in_range("gain", gain, 0.0, 255.0),
            SceneEvent::Rain { intensity, .. } | SceneEvent::Snow { intensity, .. } => {
                in_range("intensity", intensity, 0.0, 1.0)
            }
            SceneEvent::SensorNoise { sigma, .. } => in_range("sigma", sigma, 0.0, 64.0),
            SceneEvent::CameraShake {
                amplitude_px,
                frequency_hz,
                ..
            } => {
                in_range("amplitude_px", amplitude_px, 0.0, 256.0)?;
                in_range("frequency_hz", frequency_hz, 0.0, 100.0)
            }
            SceneEvent::CloudShadow { depth, .. } => in_range("depth", depth, 0.0, 1.0),
            _ => Ok(()),
        }
    }
}

impl SceneSpec {
    /// Frames in one loop: `round(duration_s * fps)`.
    pub fn frame_count(&self) -> u64 {
        (self.duration_s * f64::from(self.fps)).round().max(0.0) as u64
    }

    /// Time in seconds (into the loop) that frame `index` shows.
    pub fn time_of(&self, index: u64) -> f64 {
        let n = self.frame_count().max(1);
        (index % n) as f64 / f64::from(self.fps.max(1))
    }

    /// Checks sizes, rates and every event; the error names the first bad field.
    pub fn validate(&self) -> Result<(), SimError> {
        let err = |reason: String| SimError::Scene { reason };
        if !(16..=8192).contains(&self.width) || !(16..=8192).contains(&self.height) {
            return Err(err(format!(
                "size {}x{} is outside 16x16..=8192x8192",
                self.width, self.height
            )));
        }
        if !(1..=240).contains(&self.fps) {
            return Err(err(format!("fps {} is outside 1..=240", self.fps)));
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) || self.frame_count() == 0 {
            return Err(err(format!(
                "duration_s {} gives no frames at {} fps",
                self.duration_s, self.fps
            )));
        }
        if self.frame_count() > 1_000_000 {
            return Err(err(format!(
                "duration_s {} at {} fps is over a million frames",
                self.duration_s, self.fps
            )));
        }
        for (i, e) in self.events.iter().enumerate() {
            e.validate(i, self.duration_s).map_err(err)?;
        }
        Ok(())
    }

    /// A named scene (see [`PRESETS`]) at the given size and rate, or `None` for an unknown name.
    ///
    /// Loops are 12 s (`street`, `rain`, `snow`, `night_noise` and `camera_shake` 10 s,
    /// `cloud_shadow` 20 s, `demo` 60 s); sizes in pixels (shake amplitude) scale with `height`.
    pub fn preset(name: &str, width: u32, height: u32, fps: u32) -> Option<SceneSpec> {
        use SceneEvent::*;
        let seed = 0x5eed_0000 + PRESETS.iter().position(|p| *p == name)? as u64;
        let shake_px = (height as f32 * 0.004).max(1.0);
        let mut spec = SceneSpec {
            width,
            height,
            fps,
            duration_s: 12.0,
            seed,
            night: false,
            events: Vec::new(),
        };
        let person = |start_s, end_s, from, to| PersonCrossing {
            start_s,
            end_s,
            from,
            to,
            size: person_size(),
        };
        let animal = |start_s, end_s, from, to| SmallAnimal {
            start_s,
            end_s,
            from,
            to,
            size: animal_size(),
        };
        match name {
            "street" => spec.duration_s = 10.0,
            "person_crossing" => {
                spec.events = vec![person(2.0, 10.0, [-0.03, 0.73], [1.03, 0.71])];
            }
            "small_animal" => {
                spec.events = vec![animal(3.0, 8.0, [1.02, 0.86], [-0.02, 0.84])];
            }
            "lighting_step" => {
                spec.events = vec![LightingStep {
                    start_s: 4.0,
                    end_s: 9.0,
                    delta: 30,
                }];
            }
            "headlight_sweep" => {
                spec.night = true;
                spec.events = vec![HeadlightSweep {
                    start_s: 3.0,
                    end_s: 6.0,
                    from: [-0.2, 0.82],
                    to: [1.2, 0.8],
                    size: headlight_size(),
                    gain: headlight_gain(),
                }];
            }
            "ir_switch" => {
                spec.events = vec![IrSwitch {
                    start_s: 4.0,
                    end_s: 10.0,
                    to_night: true,
                }];
            }
            "rain" => {
                spec.duration_s = 10.0;
                spec.events = vec![Rain {
                    start_s: 0.0,
                    end_s: 10.0,
                    intensity: 0.6,
                }];
            }
            "snow" => {
                spec.duration_s = 10.0;
                spec.events = vec![Snow {
                    start_s: 0.0,
                    end_s: 10.0,
                    intensity: 0.5,
                }];
            }
            "night_noise" => {
                spec.duration_s = 10.0;
                spec.night = true;
                spec.events = vec![SensorNoise {
                    start_s: 0.0,
                    end_s: 10.0,
                    sigma: 12.0,
                }];
            }
            "camera_shake" => {
                spec.duration_s = 10.0;
                spec.events = vec![CameraShake {
                    start_s: 2.0,
                    end_s: 8.0,
                    amplitude_px: shake_px,
                    frequency_hz: 3.0,
                }];
            }
            "cloud_shadow" => {
                spec.duration_s = 20.0;
                spec.events = vec![CloudShadow {
                    start_s: 0.0,
                    end_s: 20.0,
                    from: [-0.5, 0.5],
                    to: [1.5, 0.55],
                    size: cloud_size(),
                    depth: cloud_depth(),
                }];
            }
            "demo" => {
                spec.duration_s = 60.0;
                spec.events = vec![
                    person(20.0, 28.0, [-0.03, 0.73], [1.03, 0.71]),
                    animal(33.0, 38.0, [1.02, 0.86], [-0.02, 0.84]),
                    LightingStep {
                        start_s: 38.0,
                        end_s: 60.0,
                        delta: -18,
                    },
                    person(45.0, 53.0, [1.03, 0.78], [-0.03, 0.8]),
                ];
            }
            _ => return None,
        }
        Some(spec)
    }
}

/// What a spec shows, for scoring a detector; see the module docs for the JSON layout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroundTruth {
    /// [`GROUND_TRUTH_FORMAT`].
    pub format: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub duration_s: f64,
    pub frame_count: u64,
    pub seed: u64,
    pub night: bool,
    pub events: Vec<TruthEvent>,
}

/// One event of the spec, as a detector should see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruthEvent {
    /// Position in the spec's `events`.
    pub index: usize,
    pub kind: EventKind,
    pub start_s: f64,
    pub end_s: f64,
    /// First frame of the loop showing the event.
    pub start_frame: u64,
    /// First frame of the loop no longer showing it (exclusive).
    pub end_frame: u64,
    /// Must alarm (true only for people).
    pub real_motion: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_start: Option<NormBox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub box_end: Option<NormBox>,
}

impl TruthEvent {
    /// Whether the event shows at time `t` (seconds into the loop).
    pub fn active_at(&self, t: f64) -> bool {
        self.start_s <= t && t < self.end_s
    }

    /// The visible part of the object's box at time `t`, for moving events while active.
    pub fn box_at(&self, t: f64) -> Option<NormBox> {
        if !self.active_at(t) {
            return None;
        }
        let (a, b) = (self.box_start?, self.box_end?);
        let p = (((t - self.start_s) / (self.end_s - self.start_s)).clamp(0.0, 1.0)) as f32;
        let lerp = |x: f32, y: f32| x + (y - x) * p;
        NormBox {
            x: lerp(a.x, b.x),
            y: lerp(a.y, b.y),
            w: lerp(a.w, b.w),
            h: lerp(a.h, b.h),
        }
        .clipped()
    }
}

impl GroundTruth {
    /// Pretty JSON in the documented layout (the same as `serde_json::to_string_pretty`).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }

    pub fn from_json(text: &str) -> Result<GroundTruth, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Visible boxes of real motion (people) at time `t`.
    pub fn real_motion_at(&self, t: f64) -> Vec<NormBox> {
        self.events
            .iter()
            .filter(|e| e.real_motion)
            .filter_map(|e| e.box_at(t))
            .collect()
    }
}

/// The ground truth of `spec` (see the module docs for the format).
pub fn ground_truth(spec: &SceneSpec) -> GroundTruth {
    let fps = f64::from(spec.fps);
    // The first frame index whose time `i / fps` is at or after `t`.
    let frame_at = |t: f64| (t * fps - 1e-6).ceil().max(0.0) as u64;
    let events = spec
        .events
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let (start_s, end_s) = e.span();
            TruthEvent {
                index,
                kind: e.kind(),
                start_s,
                end_s,
                start_frame: frame_at(start_s),
                end_frame: frame_at(end_s).min(spec.frame_count()),
                real_motion: e.kind().real_motion(),
                box_start: e.box_at(start_s).map(NormBox::rounded),
                box_end: e.box_at(end_s).map(NormBox::rounded),
            }
        })
        .collect();
    GroundTruth {
        format: GROUND_TRUTH_FORMAT,
        width: spec.width,
        height: spec.height,
        fps: spec.fps,
        duration_s: spec.duration_s,
        frame_count: spec.frame_count(),
        seed: spec.seed,
        night: spec.night,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_named() {
        for name in PRESETS {
            let spec = SceneSpec::preset(name, 640, 360, 25).unwrap();
            spec.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(SceneSpec::preset("nonsense", 640, 360, 25).is_none());
    }

    #[test]
    fn only_people_are_real_motion() {
        let spec = SceneSpec::preset("demo", 640, 360, 25).unwrap();
        let gt = ground_truth(&spec);
        let real: Vec<_> = gt.events.iter().filter(|e| e.real_motion).collect();
        assert_eq!(real.len(), 2);
        assert!(real.iter().all(|e| e.kind == EventKind::PersonCrossing));
        assert!((19.0..=21.0).contains(&real[0].start_s));
        assert!((44.0..=46.0).contains(&real[1].start_s));
        assert_eq!(real[0].start_frame, 500);
        assert_eq!(gt.frame_count, 1500);
        assert!(gt.real_motion_at(10.0).is_empty());
        assert_eq!(gt.real_motion_at(24.0).len(), 1);
    }

    #[test]
    fn box_at_interpolates_and_clips() {
        let e = TruthEvent {
            index: 0,
            kind: EventKind::PersonCrossing,
            start_s: 0.0,
            end_s: 10.0,
            start_frame: 0,
            end_frame: 250,
            real_motion: true,
            box_start: Some(NormBox::around([0.0, 0.5], [0.1, 0.2])),
            box_end: Some(NormBox::around([1.0, 0.5], [0.1, 0.2])),
        };
        let mid = e.box_at(5.0).unwrap();
        assert!((mid.x - 0.45).abs() < 1e-6 && (mid.w - 0.1).abs() < 1e-6);
        let start = e.box_at(0.0).unwrap();
        assert!(start.x == 0.0 && (start.w - 0.05).abs() < 1e-6);
        assert!(e.box_at(10.0).is_none());
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut spec = SceneSpec::preset("rain", 320, 240, 25).unwrap();
        if let SceneEvent::Rain { intensity, .. } = &mut spec.events[0] {
            *intensity = 2.0;
        }
        let msg = spec.validate().unwrap_err().to_string();
        assert!(
            msg.contains("event 0 (rain)") && msg.contains("intensity"),
            "{msg}"
        );
        let mut spec = SceneSpec::preset("street", 320, 240, 25).unwrap();
        spec.events.push(SceneEvent::LightingStep {
            start_s: 5.0,
            end_s: 11.0,
            delta: 10,
        });
        let msg = spec.validate().unwrap_err().to_string();
        assert!(msg.contains("past the loop's end"), "{msg}");
    }

    #[test]
    fn spec_reads_from_json_with_defaults_and_rejects_unknown_keys() {
        let text = r#"{"width": 320, "height": 240, "fps": 25, "duration_s": 4, "seed": 1,
            "events": [{"kind": "person_crossing", "start_s": 0, "end_s": 4,
                        "from": [0, 0.7], "to": [1, 0.7]}]}"#;
        let spec: SceneSpec = serde_json::from_str(text).unwrap();
        assert!(!spec.night);
        assert_eq!(
            spec.events[0],
            SceneEvent::PersonCrossing {
                start_s: 0.0,
                end_s: 4.0,
                from: [0.0, 0.7],
                to: [1.0, 0.7],
                size: person_size(),
            }
        );
        let typo = text.replace("\"to\"", "\"too\"");
        assert!(serde_json::from_str::<SceneSpec>(&typo).is_err());
        let typo = text.replace("\"seed\"", "\"sead\"");
        assert!(serde_json::from_str::<SceneSpec>(&typo).is_err());
    }
}
