//! `xueliang motion-eval`: runs the motion detector and the Frigate baseline over the
//! simulator's labelled scenes and prints event-level recall, precision and false events per
//! hour for each, with the detector's time per analysed frame.
//!
//! Every preset except `demo` is one scene. Frames are rendered raw (the Y plane a decoder
//! would hand over) at the analysis rate, and the scene's loop is repeated: `--warmup-s` of
//! loops warm both detectors up unscored, then enough loops to cover `--minutes` are scored,
//! so false events per hour rest on minutes of video, not seconds. Ground-truth intervals are
//! the preset's events repeated every loop. Both detectors use the same cooldown to close an
//! event, so they are compared on the same event semantics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use xueliang_motion::detector::{Detector, DetectorConfig, Phase};
use xueliang_motion::eval::{Interval, Score, score};
use xueliang_motion::frigate::{FrigateConfig, FrigateDetector, FrigateEvents};
use xueliang_sim::scene::{PRESETS, Renderer, SceneSpec, YuvFrame, ground_truth};

/// Options of `motion-eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct MotionEvalArgs {
    /// Rendered picture width.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// Rendered picture height.
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// Analysis rate: frames per second fed to both detectors.
    #[arg(long, default_value_t = 5)]
    pub fps: u32,
    /// Scored video per scene, in minutes (whole loops, rounded up).
    #[arg(long, default_value_t = 3.0)]
    pub minutes: f64,
    /// Unscored lead-in per scene, in seconds (whole loops, rounded up): Frigate's detector
    /// starts from a black background and a neutral contrast history and needs tens of
    /// seconds to settle; a running camera is long past that.
    #[arg(long, default_value_t = 60)]
    pub warmup_s: u32,
    /// Time without motion that ends an event, for both detectors.
    #[arg(long, default_value_t = 2_000)]
    pub cooldown_ms: i64,
    /// How far outside a ground-truth interval a detected event may lie and still overlap it.
    #[arg(long, default_value_t = 1_000)]
    pub tolerance_ms: i64,
    /// Feed the detector only one frame per this many ms while it is idle (as the shell does
    /// on key frames only), every frame otherwise; 0 feeds every frame. The baseline always
    /// sees every frame.
    #[arg(long, default_value_t = 0)]
    pub idle_interval_ms: i64,
    /// Only these scenes (comma-separated preset names).
    #[arg(long, value_delimiter = ',')]
    pub scenes: Vec<String>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// One scene's results.
#[derive(Clone, Debug)]
pub struct SceneResult {
    pub scene: String,
    pub real_motion: bool,
    pub ours: Score,
    pub baseline: Score,
    pub ours_frames: u64,
    pub ours_ns: u128,
    pub baseline_frames: u64,
    pub baseline_ns: u128,
}

/// Runs one scene through both detectors.
pub fn run_scene(name: &str, args: &MotionEvalArgs) -> Result<SceneResult, String> {
    let spec = SceneSpec::preset(name, args.width, args.height, args.fps.max(1))
        .ok_or_else(|| format!("unknown scene {name}"))?;
    let mut renderer = Renderer::new(&spec).map_err(|e| format!("scene {name}: {e}"))?;
    let truth = ground_truth(&spec);
    let loop_ms = (spec.duration_s * 1000.0).round() as i64;
    let warm_loops = ((i64::from(args.warmup_s) * 1000 + loop_ms - 1) / loop_ms).max(1);
    let scored_loops = ((args.minutes * 60_000.0) / loop_ms as f64).ceil().max(1.0) as i64;
    let loops = warm_loops + scored_loops;
    let warm_ms = warm_loops * loop_ms;
    let end_ms = loops * loop_ms;
    let frames = spec.frame_count() * loops as u64;
    let fps = i64::from(spec.fps);

    let mut real = Vec::new();
    let mut distractors = Vec::new();
    for l in warm_loops..loops {
        for e in &truth.events {
            let iv = Interval::new(
                l * loop_ms + (e.start_s * 1000.0).round() as i64,
                l * loop_ms + (e.end_s * 1000.0).round() as i64,
            );
            if e.real_motion {
                real.push(iv);
            } else {
                distractors.push(iv);
            }
        }
    }

    let cfg = DetectorConfig {
        cooldown_ms: args.cooldown_ms,
        ..DetectorConfig::default()
    };
    let mut ours = Detector::new(cfg, spec.width, spec.height);
    let mut base = FrigateDetector::new(FrigateConfig::default(), spec.width, spec.height);
    let mut base_events = FrigateEvents::new(args.cooldown_ms);
    let mut ours_iv = Vec::new();
    let mut base_iv = Vec::new();
    let mut ours_open: Option<i64> = None;
    let mut ours_last_motion = 0i64;
    let mut base_open: Option<i64> = None;
    let mut base_last_motion = 0i64;
    let (mut ours_frames, mut ours_ns, mut base_frames, mut base_ns) = (0u64, 0u128, 0u64, 0u128);
    let mut next_idle_ms = 0i64;
    let mut frame = YuvFrame::new(spec.width, spec.height);
    let stride = spec.width as usize;
    for i in 0..frames {
        let t_ms = i as i64 * 1000 / fps;
        renderer.render_into(i, &mut frame);

        let feed = args.idle_interval_ms <= 0 || ours.wants_full_rate() || t_ms >= next_idle_ms;
        if feed {
            if t_ms >= next_idle_ms {
                next_idle_ms = t_ms + args.idle_interval_ms.max(0);
            }
            let started = Instant::now();
            let a = ours.analyse(&frame.y, stride, t_ms);
            ours_ns += started.elapsed().as_nanos();
            ours_frames += 1;
            for e in &a.events {
                match e.phase {
                    Phase::Start => ours_open = Some(e.start_ms),
                    Phase::Update => {}
                    Phase::End => {
                        if let (Some(start), Some(end)) = (ours_open.take(), e.end_ms) {
                            ours_iv.push(Interval::new(start, end));
                        }
                    }
                }
            }
            if ours.state() == xueliang_motion::detector::MotionState::Active {
                ours_last_motion = t_ms;
            }
        }

        let started = Instant::now();
        let boxes = base.analyse(&frame.y, stride, t_ms);
        base_ns += started.elapsed().as_nanos();
        base_frames += 1;
        if !boxes.is_empty() {
            base_last_motion = t_ms;
        }
        if let Some(e) = base_events.step(!boxes.is_empty(), t_ms) {
            match e.phase {
                Phase::Start => base_open = Some(e.start_ms),
                _ => {
                    if let (Some(start), Some(end)) = (base_open.take(), e.end_ms) {
                        base_iv.push(Interval::new(start, end));
                    }
                }
            }
        }
    }
    // Events still open at the end of the run end at their last motion.
    if let Some(start) = ours_open {
        ours_iv.push(Interval::new(start, ours_last_motion));
    }
    if let Some(start) = base_open {
        base_iv.push(Interval::new(start, base_last_motion));
    }
    // Only the scored part counts: events that end in the warm-up are dropped, events that
    // straddle it are clipped.
    let scored = |ivs: Vec<Interval>| -> Vec<Interval> {
        ivs.into_iter()
            .filter(|iv| iv.end_ms >= warm_ms)
            .map(|iv| Interval::new(iv.start_ms.max(warm_ms), iv.end_ms))
            .collect()
    };
    let duration = end_ms - warm_ms;
    let tol = args.tolerance_ms;
    Ok(SceneResult {
        scene: name.to_string(),
        real_motion: !real.is_empty(),
        ours: score(&scored(ours_iv), &real, &distractors, tol, duration),
        baseline: score(&scored(base_iv), &real, &distractors, tol, duration),
        ours_frames,
        ours_ns,
        baseline_frames: base_frames,
        baseline_ns: base_ns,
    })
}

/// Every labelled scene: the presets except `demo`.
pub fn scenes() -> Vec<&'static str> {
    PRESETS.iter().copied().filter(|p| *p != "demo").collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.0} %", v * 100.0))
}

fn us(ns: u128, frames: u64) -> f64 {
    if frames == 0 {
        0.0
    } else {
        ns as f64 / frames as f64 / 1000.0
    }
}

/// The markdown report.
pub fn report(results: &[SceneResult], args: &MotionEvalArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "motion-eval: {}×{} at {} fps, {:.1} min scored per scene, cooldown {} ms, tolerance {} ms{}\n",
        args.width,
        args.height,
        args.fps,
        args.minutes,
        args.cooldown_ms,
        args.tolerance_ms,
        if args.idle_interval_ms > 0 {
            format!(
                ", xueliang fed 1 frame / {} ms while idle",
                args.idle_interval_ms
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "| scene | real motion? | xueliang recall | precision | false/h | events | baseline recall | precision | false/h | events |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let mut ours = Score::default();
    let mut base = Score::default();
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {} |",
            r.scene,
            if r.real_motion { "yes" } else { "no" },
            pct(r.ours.recall()),
            pct(r.ours.precision()),
            r.ours.false_per_hour(),
            r.ours.detected,
            pct(r.baseline.recall()),
            pct(r.baseline.precision()),
            r.baseline.false_per_hour(),
            r.baseline.detected,
        );
        ours = ours.add(&r.ours);
        base = base.add(&r.baseline);
    }
    let _ = writeln!(
        s,
        "| **total** | | {} | {} | {:.0} | {} | {} | {} | {:.0} | {} |",
        pct(ours.recall()),
        pct(ours.precision()),
        ours.false_per_hour(),
        ours.detected,
        pct(base.recall()),
        pct(base.precision()),
        base.false_per_hour(),
        base.detected,
    );
    let (on, of) = (
        results.iter().map(|r| r.ours_ns).sum::<u128>(),
        results.iter().map(|r| r.ours_frames).sum::<u64>(),
    );
    let (bn, bf) = (
        results.iter().map(|r| r.baseline_ns).sum::<u128>(),
        results.iter().map(|r| r.baseline_frames).sum::<u64>(),
    );
    let (ours_us, base_us) = (us(on, of), us(bn, bf));
    let _ = writeln!(
        s,
        "\ndetector time per analysed frame: xueliang {ours_us:.1} µs ({of} frames), baseline {base_us:.1} µs ({bf} frames)\n"
    );
    let recall_ok = results
        .iter()
        .filter(|r| r.real_motion)
        .all(|r| r.ours.recall().unwrap_or(0.0) >= r.baseline.recall().unwrap_or(0.0));
    let false_ok = ours.false_events() as f64 <= base.false_events() as f64 / 10.0;
    let time_ok = ours_us <= 200.0;
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(
        s,
        "goals: recall ≥ baseline on every real-motion scene: {}; false events ≤ 1/10 of the baseline ({} vs {}): {}; ≤ 200 µs per analysed frame at {}×{}: {}",
        mark(recall_ok),
        ours.false_events(),
        base.false_events(),
        mark(false_ok),
        args.width,
        args.height,
        mark(time_ok),
    );
    s
}

fn json(results: &[SceneResult]) -> serde_json::Value {
    let sc = |s: &Score| {
        serde_json::json!({
            "real": s.real, "found": s.found, "detected": s.detected,
            "true_events": s.true_events, "on_distractor": s.on_distractor,
            "duration_ms": s.duration_ms, "recall": s.recall(), "precision": s.precision(),
            "false_per_hour": s.false_per_hour(),
        })
    };
    serde_json::Value::Array(
        results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "scene": r.scene, "real_motion": r.real_motion,
                    "xueliang": sc(&r.ours), "baseline": sc(&r.baseline),
                    "xueliang_us_per_frame": us(r.ours_ns, r.ours_frames),
                    "baseline_us_per_frame": us(r.baseline_ns, r.baseline_frames),
                })
            })
            .collect(),
    )
}

/// Runs the command; exit 2 on bad arguments, 1 if writing the JSON fails.
pub fn main(args: &MotionEvalArgs) -> ExitCode {
    let names: Vec<String> = if args.scenes.is_empty() {
        scenes().into_iter().map(String::from).collect()
    } else {
        args.scenes.clone()
    };
    let mut results = Vec::new();
    for name in &names {
        match run_scene(name, args) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("xueliang motion-eval: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let text = report(&results, args);
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if let Some(path) = &args.json {
        let body = serde_json::to_string_pretty(&json(&results)).unwrap_or_default();
        if let Err(e) = std::fs::write(path, body) {
            eprintln!("xueliang motion-eval: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
