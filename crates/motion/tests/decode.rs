//! Decoder and worker against real H.264/H.265 streams: synthetic scenes rendered and encoded
//! by the simulator, turned into the frames the ingest would deliver.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prometheus::Registry;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};
use xueliang_core::{ErrorKind, Timestamp};
use xueliang_motion::decode::{DecodeError, Decoder};
use xueliang_motion::detector::{DetectorConfig, MotionEvent, Phase};
use xueliang_motion::worker::{self, MotionMetrics, MotionSink, Pushed, WorkerConfig};
use xueliang_sim::encode::{EncodeOptions, encode_cached};
use xueliang_sim::scene::{Renderer, SceneSpec};
use xueliang_sim::{Clip, SimError};

/// A wall clock origin far from zero, as a real one is.
const WALL0: i64 = 1_790_000_000_000;

/// Where stream times start, as an RTP session's extended timestamps would: past the 32-bit
/// wrap.
const PTS0: i64 = (1 << 32) + 12_345;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("motion-clips")
}

fn clip(scene: &str, codec: VideoCodec, fps: u32, gop: Option<u32>) -> (SceneSpec, Clip) {
    let spec = SceneSpec::preset(scene, 640, 360, fps).expect("known preset");
    let mut opts = EncodeOptions::new(codec);
    opts.gop = gop;
    let clip = match encode_cached(&spec, &opts, &cache_dir()) {
        Ok(c) => c,
        Err(e @ SimError::Encode { .. }) => panic!("{e} (is libx264/libx265 installed?)"),
        Err(e) => panic!("{e}"),
    };
    (spec, clip)
}

/// The parameters the ingest would hand on for a camera serving `clip`: retina builds the
/// avcC / hvcC record from the SDP's parameter sets, as it does for a real session.
fn params(clip: &Clip) -> Arc<VideoParams> {
    use base64::Engine as _;
    let b64 = |nal: &[u8]| base64::engine::general_purpose::STANDARD.encode(nal);
    let (encoding, fmtp) = match clip.codec {
        VideoCodec::H264 => (
            "h264",
            format!(
                "packetization-mode=1;profile-level-id={:02X}{:02X}{:02X};sprop-parameter-sets={},{}",
                clip.sps[1],
                clip.sps[2],
                clip.sps[3],
                b64(&clip.sps),
                b64(&clip.pps)
            ),
        ),
        VideoCodec::H265 => (
            "h265",
            format!(
                "sprop-vps={};sprop-sps={};sprop-pps={}",
                b64(clip.vps.as_ref().expect("H.265 clips have a VPS")),
                b64(&clip.sps),
                b64(&clip.pps)
            ),
        ),
    };
    let depacketizer =
        retina::codec::Depacketizer::new("video", encoding, 90_000, None, Some(&fmtp))
            .expect("retina accepts the parameter sets");
    let Some(retina::codec::ParametersRef::Video(p)) = depacketizer.parameters() else {
        panic!("retina has no video parameters for {fmtp}");
    };
    Arc::new(VideoParams {
        codec: clip.codec,
        width: p.pixel_dimensions().0,
        height: p.pixel_dimensions().1,
        decoder_config: Bytes::copy_from_slice(p.extra_data()),
        rfc6381: p.rfc6381_codec().to_owned(),
        pixel_aspect: p.pixel_aspect_ratio(),
    })
}

/// The ingest's view of a clip played `loops` times: MP4-form frames with wall times.
fn frames(clip: &Clip, loops: usize) -> Vec<Arc<VideoFrame>> {
    let params = params(clip);
    let mut out = Vec::new();
    for k in 0..loops {
        for unit in &clip.units {
            let mut data = Vec::new();
            for nal in &unit.nals {
                data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                data.extend_from_slice(nal);
            }
            let pts = PTS0 + unit.pts + k as i64 * clip.duration;
            out.push(Arc::new(VideoFrame {
                pts,
                wall: Timestamp::from_millis(WALL0 + (pts - PTS0) / 90),
                is_key: unit.is_key,
                data: Bytes::from(data),
                params: Arc::clone(&params),
                loss: 0,
            }));
        }
    }
    out
}

/// Mean absolute difference between a decoded luma plane and the rendered one.
fn mean_abs_diff(y: &[u8], stride: usize, rendered: &[u8], width: usize, height: usize) -> f64 {
    let mut sum = 0u64;
    for row in 0..height {
        let a = &y[row * stride..row * stride + width];
        let b = &rendered[row * width..(row + 1) * width];
        sum += a
            .iter()
            .zip(b)
            .map(|(&a, &b)| u64::from(a.abs_diff(b)))
            .sum::<u64>();
    }
    sum as f64 / (width * height) as f64
}

fn decodes_like_the_render(codec: VideoCodec) {
    let (spec, clip) = clip("person_crossing", codec, 10, None);
    let mut renderer = Renderer::new(&spec).expect("valid spec");
    let frames = frames(&clip, 1);
    let mut dec = Decoder::new(&frames[0].params).expect("decoder opens");
    let mut worst = (0.0f64, 0usize);
    for (i, f) in frames.iter().enumerate() {
        let luma = dec
            .decode(f)
            .unwrap_or_else(|e| panic!("frame {i}: {e}"))
            .unwrap_or_else(|| panic!("frame {i}: no picture"));
        assert_eq!((luma.width, luma.height), (640, 360), "frame {i}");
        assert!(luma.stride >= 640);
        assert!(luma.data.len() >= luma.stride * 359 + 640);
        assert_eq!(luma.pts, Some(f.pts), "no reordering without B-frames");
        let rendered = renderer.render(i as u64);
        let d = mean_abs_diff(luma.data, luma.stride, &rendered.y, 640, 360);
        if d > worst.0 {
            worst = (d, i);
        }
    }
    // Coding loss and skipping the loop filter (worst seen at these bit rates: 3.6 for H.264,
    // 4.0 for H.265); a wrong plane, stride or frame is off by tens.
    eprintln!(
        "{codec}: worst mean |decoded - rendered| {:.2} at frame {}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 6.0,
        "{codec}: worst mean |decoded - rendered| {:.2} at frame {}",
        worst.0,
        worst.1
    );
}

#[test]
fn h264_decodes_to_the_rendered_luma() {
    decodes_like_the_render(VideoCodec::H264);
}

#[test]
fn h265_decodes_to_the_rendered_luma() {
    decodes_like_the_render(VideoCodec::H265);
}

#[test]
fn keyframes_only_skips_non_key_frames() {
    for codec in [VideoCodec::H264, VideoCodec::H265] {
        let (_, clip) = clip("person_crossing", codec, 10, None);
        let frames = frames(&clip, 1);
        let mut dec = Decoder::new(&frames[0].params).expect("decoder opens");
        dec.set_keyframes_only(true);
        let mut pictures = Vec::new();
        for f in &frames {
            assert_eq!(dec.would_decode(f), f.is_key);
            if let Some(luma) = dec.decode(f).expect("decodes") {
                assert!(luma.is_key);
                pictures.push(luma.pts.expect("pts"));
            }
        }
        let keys: Vec<i64> = frames.iter().filter(|f| f.is_key).map(|f| f.pts).collect();
        assert_eq!(keys.len(), 6, "12 s at a 2 s GOP");
        assert_eq!(pictures, keys, "{codec}");

        // Leaving key-frame-only mode mid-GOP continues from the key frame when the frames
        // since it are fed, as the worker does.
        dec.set_keyframes_only(false);
        let mut dec2 = Decoder::new(&frames[0].params).expect("decoder opens");
        dec2.set_keyframes_only(true);
        assert!(dec2.decode(&frames[20]).expect("key").is_some());
        dec2.set_keyframes_only(false);
        for f in &frames[21..30] {
            assert!(dec2.decode(f).expect("decodes").is_some());
        }
    }
}

#[test]
fn waits_for_a_key_frame_and_reopens_on_new_parameters() {
    let (_, h264) = clip("street", VideoCodec::H264, 10, None);
    let (_, h265) = clip("street", VideoCodec::H265, 10, None);
    let a = frames(&h264, 1);
    let b = frames(&h265, 1);
    let mut dec = Decoder::new(&a[0].params).expect("decoder opens");
    // A fresh decoder cannot start on a P-frame.
    assert!(!dec.would_decode(&a[5]));
    assert!(dec.decode(&a[5]).expect("skipped").is_none());
    assert!(dec.decode(&a[20]).expect("key").is_some());
    assert!(dec.decode(&a[21]).expect("p").is_some());
    // The camera switched codec: a non-key frame of the new stream waits, its key decodes.
    assert!(dec.decode(&b[3]).expect("skipped").is_none());
    assert_eq!(dec.params().codec, VideoCodec::H265);
    let luma = dec.decode(&b[0]).expect("key").expect("picture");
    assert_eq!((luma.width, luma.height), (640, 360));
    assert!(dec.decode(&b[1]).expect("p").is_some());
}

#[test]
fn refuses_an_unusable_configuration_record() {
    let (_, clip) = clip("street", VideoCodec::H264, 10, None);
    let mut params = (*frames(&clip, 1)[0].params).clone();
    params.decoder_config = Bytes::from_static(&[0, 0, 0, 1, 0x67]);
    let err = Decoder::new(&params).expect_err("Annex B is not a record");
    assert!(matches!(err, DecodeError::Config { .. }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("h264"), "{err}");
}

// ---- worker ----

#[derive(Default)]
struct Events(Mutex<Vec<(String, MotionEvent)>>);

impl MotionSink for Events {
    fn on_event(&self, camera: &str, ev: &MotionEvent) {
        self.0.lock().unwrap().push((camera.to_owned(), ev.clone()));
    }
}

/// Sums a metric's samples for `camera` (counter, gauge, or a histogram's count).
fn metric(registry: &Registry, name: &str, camera: &str) -> f64 {
    use prometheus::proto::MetricType;
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(move |m| (f.get_field_type(), m)))
        .filter(|(_, m)| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "camera" && l.value() == camera)
        })
        .map(|(kind, m)| match kind {
            MetricType::COUNTER => m.get_counter().get_value(),
            MetricType::GAUGE => m.get_gauge().get_value(),
            MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
            _ => 0.0,
        })
        .sum()
}

struct Run {
    registry: Registry,
    events: Vec<MotionEvent>,
}

/// Feeds `frames` to a worker (never dropping: the queue holds them all) and waits for it.
fn run_worker(frames: &[Arc<VideoFrame>], cfg: WorkerConfig, boost_ms: Option<i64>) -> Run {
    let registry = Registry::new();
    let metrics = MotionMetrics::register(&registry).expect("registers");
    let sink = Arc::new(Events::default());
    let cfg = WorkerConfig {
        queue: frames.len() + 1,
        ..cfg
    };
    let handle = worker::spawn("cam-1", cfg, sink.clone(), metrics).expect("thread starts");
    if let Some(ms) = boost_ms {
        handle.boost(Timestamp::from_millis(WALL0 + ms));
    }
    for f in frames {
        assert_eq!(handle.push(Arc::clone(f)), Pushed::Queued);
    }
    handle.finish();
    let events = std::mem::take(&mut *sink.0.lock().unwrap());
    assert!(events.iter().all(|(c, _)| c == "cam-1"));
    Run {
        events: events.into_iter().map(|(_, e)| e).collect(),
        registry,
    }
}

#[test]
fn idle_decodes_key_frames_only() {
    let (_, clip) = clip("street", VideoCodec::H264, 10, None);
    let frames = frames(&clip, 2);
    let run = run_worker(&frames, WorkerConfig::default(), None);
    assert!(run.events.is_empty(), "street: {:?}", run.events);
    let keys = frames.iter().filter(|f| f.is_key).count() as f64;
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_frames_decoded_total",
            "cam-1"
        ),
        keys
    );
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_frames_analysed_total",
            "cam-1"
        ),
        keys
    );
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_decode_errors_total",
            "cam-1"
        ),
        0.0
    );
    assert_eq!(
        metric(&run.registry, "xueliang_motion_full_rate", "cam-1"),
        0.0
    );
}

#[test]
fn boost_decodes_every_frame_and_analyses_at_analysis_fps() {
    let (_, clip) = clip("street", VideoCodec::H264, 10, None);
    let frames = frames(&clip, 2); // 20 s at 10 fps
    let run = run_worker(&frames, WorkerConfig::default(), Some(10_000));
    let decoded = metric(
        &run.registry,
        "xueliang_motion_frames_decoded_total",
        "cam-1",
    );
    let analysed = metric(
        &run.registry,
        "xueliang_motion_frames_analysed_total",
        "cam-1",
    );
    // Boosted for the first 10 s: all 100 frames, analysed at 5 fps; then key frames only.
    assert_eq!(decoded, 100.0 + 5.0);
    assert_eq!(analysed, 50.0 + 5.0);
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_decode_errors_total",
            "cam-1"
        ),
        0.0
    );
    assert_eq!(
        metric(&run.registry, "xueliang_motion_detect_seconds", "cam-1"),
        analysed
    );
}

#[test]
fn a_long_key_frame_interval_decodes_everything_at_a_low_analysis_rate() {
    // A 5 s GOP, over the 2.5 s limit: the first GOP switches mid-way (catching up on the
    // frames since its key frame), later ones decode everything from the start.
    let (_, clip) = clip("street", VideoCodec::H264, 10, Some(50));
    let frames = frames(&clip, 2);
    let run = run_worker(&frames, WorkerConfig::default(), None);
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_frames_decoded_total",
            "cam-1"
        ),
        frames.len() as f64
    );
    assert_eq!(
        metric(
            &run.registry,
            "xueliang_motion_decode_errors_total",
            "cam-1"
        ),
        0.0
    );
    let analysed = metric(
        &run.registry,
        "xueliang_motion_frames_analysed_total",
        "cam-1",
    );
    // 1 fps over 20 s, plus the first key frame analysed on its own.
    assert!((19.0..=22.0).contains(&analysed), "analysed {analysed}");
}

#[test]
fn a_person_crossing_starts_and_ends_an_event_and_the_street_raises_none() {
    let cfg = || WorkerConfig {
        detector: DetectorConfig {
            cooldown_ms: 2_000,
            ..DetectorConfig::default()
        },
        ..WorkerConfig::default()
    };
    // Two loops: the person crosses from 2 s to 10 s and again from 14 s to 22 s.
    let (_, person) = clip("person_crossing", VideoCodec::H264, 10, None);
    let run = run_worker(&frames(&person, 2), cfg(), None);
    for e in &run.events {
        eprintln!(
            "{:?} {} start {} ms end {:?} ms score {:.2}",
            e.phase,
            e.zone,
            e.start_ms - WALL0,
            e.end_ms.map(|t| t - WALL0),
            e.score
        );
    }
    let first_start = run
        .events
        .iter()
        .find(|e| e.phase == Phase::Start)
        .unwrap_or_else(|| panic!("no start event: {:?}", run.events));
    assert!(
        (WALL0 + 2_000..WALL0 + 10_000).contains(&first_start.start_ms),
        "start at {} ms into the clip",
        first_start.start_ms - WALL0
    );
    let end = run
        .events
        .iter()
        .find(|e| {
            e.phase == Phase::End
                && e.zone == first_start.zone
                && e.start_ms == first_start.start_ms
        })
        .unwrap_or_else(|| panic!("no end event: {:?}", run.events));
    let end_ms = end.end_ms.expect("an end has an end time");
    // The person is in view until 10 s; the event ends once cooldown has passed after the
    // last motion, and before the second crossing.
    assert!(
        (first_start.start_ms..WALL0 + 14_000).contains(&end_ms),
        "end at {} ms into the clip",
        end_ms - WALL0
    );
    // Nothing in the first loop outside the crossing and its cooldown.
    for e in run.events.iter().filter(|e| e.start_ms < WALL0 + 12_000) {
        assert!(
            e.start_ms >= WALL0 + 2_000,
            "event before the person: {e:?}"
        );
        assert!(
            e.end_ms.is_none_or(|t| t < WALL0 + 14_000),
            "event past the crossing: {e:?}"
        );
    }
    assert_eq!(
        metric(&run.registry, "xueliang_motion_events_total", "cam-1"),
        run.events.len() as f64
    );

    let (_, street) = clip("street", VideoCodec::H264, 10, None);
    let run = run_worker(&frames(&street, 2), cfg(), None);
    assert!(run.events.is_empty(), "street: {:?}", run.events);
}

#[test]
fn a_full_queue_drops_to_the_next_key_frame_and_counts() {
    let (_, clip) = clip("person_crossing", VideoCodec::H264, 10, None);
    let frames = frames(&clip, 2);
    let registry = Registry::new();
    let metrics = MotionMetrics::register(&registry).expect("registers");
    let cfg = WorkerConfig {
        queue: 3,
        ..WorkerConfig::default()
    };
    let handle =
        worker::spawn("cam-2", cfg, Arc::new(Events::default()), metrics).expect("thread starts");
    // Every frame decoded: the worker cannot keep up with frames pushed at memory speed.
    handle.boost(Timestamp::from_millis(WALL0 + 1_000_000));
    let results: Vec<Pushed> = frames.iter().map(|f| handle.push(Arc::clone(f))).collect();
    handle.finish();

    let dropped = results.iter().filter(|r| **r == Pushed::Dropped).count();
    assert!(dropped > 0, "nothing dropped with a queue of 3");
    assert_eq!(
        metric(&registry, "xueliang_motion_dropped_frames_total", "cam-2"),
        dropped as f64
    );
    for (i, pair) in results.windows(2).enumerate() {
        if pair == [Pushed::Dropped, Pushed::Queued] {
            assert!(
                frames[i + 1].is_key,
                "frame {} queued right after a drop is not a key frame",
                i + 1
            );
        }
    }
    // Whatever went through decoded cleanly: no frame reached the decoder without its
    // references.
    let queued = results.iter().filter(|r| **r == Pushed::Queued).count();
    assert_eq!(
        metric(&registry, "xueliang_motion_frames_decoded_total", "cam-2"),
        queued as f64
    );
    assert_eq!(
        metric(&registry, "xueliang_motion_decode_errors_total", "cam-2"),
        0.0
    );
}

#[test]
fn an_event_still_open_when_the_worker_finishes_is_ended() {
    // The first 7 s: the person is still in view when the stream ends.
    let (_, person) = clip("person_crossing", VideoCodec::H264, 10, None);
    let frames = frames(&person, 1);
    let run = run_worker(&frames[..70], WorkerConfig::default(), None);
    let start = run
        .events
        .iter()
        .find(|e| e.phase == Phase::Start)
        .unwrap_or_else(|| panic!("no start event: {:?}", run.events));
    let last = run.events.last().expect("events");
    assert_eq!(last.phase, Phase::End, "{:?}", run.events);
    assert_eq!((&last.zone, last.start_ms), (&start.zone, start.start_ms));
    let end_ms = last.end_ms.expect("an end has an end time");
    assert!(
        (start.start_ms..=frames[69].wall.as_millis()).contains(&end_ms),
        "end at {} ms into the clip",
        end_ms - WALL0
    );
    assert_eq!(metric(&run.registry, "xueliang_motion_state", "cam-1"), 0.0);
}

/// `scene` at `width × height` and `fps`, H.264 at the default bit rate and a 2 s GOP.
fn clip_at(scene: &str, width: u32, height: u32, fps: u32) -> Clip {
    let spec = SceneSpec::preset(scene, width, height, fps).expect("known preset");
    match encode_cached(&spec, &EncodeOptions::new(VideoCodec::H264), &cache_dir()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// Two loops of the person crossing (in view from 2 s to 10 s of each 12 s loop) through an
/// idle worker: each crossing is one event, started while the person is in view and ended
/// after it has gone, and two loops of the street raise none.
fn person_crossing_is_one_event_per_crossing(width: u32, height: u32, fps: u32) {
    let cfg = || WorkerConfig {
        detector: DetectorConfig {
            cooldown_ms: 2_000,
            ..DetectorConfig::default()
        },
        ..WorkerConfig::default()
    };
    let size = format!("{width}x{height}@{fps}");
    let run = run_worker(
        &frames(&clip_at("person_crossing", width, height, fps), 2),
        cfg(),
        None,
    );
    let analysed = metric(
        &run.registry,
        "xueliang_motion_frames_analysed_total",
        "cam-1",
    );
    let starts: Vec<_> = run
        .events
        .iter()
        .filter(|e| e.phase == Phase::Start)
        .collect();
    assert_eq!(
        starts.len(),
        2,
        "{size}: analysed {analysed}: {:?}",
        run.events
    );
    for (k, start) in starts.iter().enumerate() {
        let loop0 = WALL0 + k as i64 * 12_000;
        assert!(
            (loop0 + 2_000..loop0 + 10_000).contains(&start.start_ms),
            "{size}: start at {} ms into loop {k}",
            start.start_ms - loop0
        );
        assert!(start.score > 0.0 && start.score < 0.01, "{size}: {start:?}");
        let end = run
            .events
            .iter()
            .find(|e| e.phase == Phase::End && e.start_ms == start.start_ms)
            .unwrap_or_else(|| panic!("{size}: no end: {:?}", run.events));
        let end_ms = end.end_ms.expect("an end has an end time");
        // Followed across the frame: the last motion is late in the crossing.
        assert!(
            (loop0 + 8_000..=loop0 + 10_000).contains(&end_ms),
            "{size}: last motion at {} ms into loop {k}",
            end_ms - loop0
        );
    }
    let run = run_worker(
        &frames(&clip_at("street", width, height, fps), 2),
        cfg(),
        None,
    );
    assert!(run.events.is_empty(), "{size} street: {:?}", run.events);
}

#[test]
fn a_person_crossing_at_960x540_15fps_is_followed_and_the_street_raises_none() {
    person_crossing_is_one_event_per_crossing(960, 540, 15);
}

#[test]
fn a_person_crossing_at_1280x720_25fps_is_followed_and_the_street_raises_none() {
    person_crossing_is_one_event_per_crossing(1280, 720, 25);
}

#[test]
fn a_person_crossing_at_480x270_15fps_is_followed_and_the_street_raises_none() {
    person_crossing_is_one_event_per_crossing(480, 270, 15);
}
