//! Encoding synthetic scenes into loopable H.264/H.265 [`Clip`]s with libx264/libx265 through
//! libavcodec, and an on-disk cache of the encoded elementary streams.
//!
//! The clip splitter and the RTSP player assume what cameras do: no B-frames (decode order is
//! presentation order), a key frame every `gop` frames exactly, parameter sets in-band before
//! every key frame. So scene-cut detection is off, `keyint = min-keyint = gop`, `bframes = 0`,
//! `repeat-headers = 1`, and the loop length must be a whole number of GOPs, so that the loop
//! restarts on a key frame and plays on without a glitch.

use std::path::{Path, PathBuf};

use ffmpeg_next as ff;
use sha2::{Digest, Sha256};
use xueliang_core::media::VideoCodec;

use crate::scene::{Renderer, SceneSpec, YuvFrame};
use crate::{Clip, SimError, clip_from_annex_b};

/// How to encode a scene.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    pub codec: VideoCodec,
    /// Target average bit rate; `None` picks one from the pixel rate (about 0.08 bit per pixel
    /// for H.264, 0.05 for H.265: 4 Mb/s for 1080p25 H.264, as village cameras are set up).
    pub bitrate_kbps: Option<u32>,
    /// Frames per GOP (one key frame each); `None` is two seconds' worth, `fps * 2`.
    pub gop: Option<u32>,
    /// The encoder's speed preset (`ultrafast` ... `placebo`).
    pub preset: String,
    /// Codec profile (`baseline`, `main`, `high` for H.264; `main` for H.265); `None` leaves
    /// it to the encoder.
    pub profile: Option<String>,
}

impl EncodeOptions {
    /// Defaults: automatic bit rate, a two-second GOP, `veryfast`, the encoder's profile.
    pub fn new(codec: VideoCodec) -> EncodeOptions {
        EncodeOptions {
            codec,
            bitrate_kbps: None,
            gop: None,
            preset: "veryfast".to_owned(),
            profile: None,
        }
    }

    /// The GOP length used at `fps`.
    pub fn gop_for(&self, fps: u32) -> u32 {
        self.gop.unwrap_or(fps.saturating_mul(2))
    }

    /// The bit rate used for `spec`, in kb/s.
    pub fn bitrate_for(&self, spec: &SceneSpec) -> u32 {
        self.bitrate_kbps.unwrap_or_else(|| {
            let bpp = match self.codec {
                VideoCodec::H264 => 0.08,
                VideoCodec::H265 => 0.05,
            };
            let pixel_rate = f64::from(spec.width) * f64::from(spec.height) * f64::from(spec.fps);
            ((pixel_rate * bpp / 1000.0) as u32).max(64)
        })
    }
}

/// libavcodec's name for the encoder of `codec`.
pub fn encoder_name(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::H264 => "libx264",
        VideoCodec::H265 => "libx265",
    }
}

/// Renders and encodes one loop of `spec` into a [`Clip`].
///
/// CPU-bound for a while (a 60 s 1080p loop takes tens of seconds): call it from a blocking
/// thread (`spawn_blocking`), never on the async executor.
pub fn encode(spec: &SceneSpec, opts: &EncodeOptions) -> Result<Clip, SimError> {
    let data = encode_annex_b(spec, opts)?;
    checked_clip(spec, opts, &data)
}

/// Renders and encodes one loop of `spec` into an Annex B elementary stream (what
/// `ffmpeg -f h264|hevc` writes), one access unit per frame, the first one a key frame.
pub fn encode_annex_b(spec: &SceneSpec, opts: &EncodeOptions) -> Result<Vec<u8>, SimError> {
    let codec = opts.codec;
    let encoder = encoder_name(codec);
    let err = |reason: String| SimError::Encode {
        codec,
        encoder,
        reason,
    };
    let ff_err = |stage: &'static str| {
        move |source| SimError::Ffmpeg {
            codec,
            encoder,
            stage,
            source,
        }
    };
    spec.validate()?;
    if !spec.width.is_multiple_of(2) || !spec.height.is_multiple_of(2) {
        return Err(err(format!(
            "width and height must be even for 4:2:0, got {}x{}",
            spec.width, spec.height
        )));
    }
    let frames = spec.frame_count();
    let gop = opts.gop_for(spec.fps);
    if gop == 0 {
        return Err(err("gop must be at least 1 frame".into()));
    }
    if !frames.is_multiple_of(u64::from(gop)) {
        return Err(err(format!(
            "the loop has {frames} frames (duration_s {} x fps {}), not a multiple of gop {gop}: \
             it would not restart on a key frame",
            spec.duration_s, spec.fps
        )));
    }
    if !opts.preset.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(err(format!(
            "preset {:?} is not a preset name",
            opts.preset
        )));
    }
    if let Some(p) = &opts.profile
        && !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(err(format!("profile {p:?} is not a profile name")));
    }
    let kbps = opts.bitrate_for(spec);

    ff::init().map_err(ff_err("initialise libavcodec"))?;
    let av_codec = ff::encoder::find_by_name(encoder)
        .ok_or_else(|| err("this libavcodec was built without the encoder".into()))?;
    let mut enc = ff::codec::context::Context::new_with_codec(av_codec)
        .encoder()
        .video()
        .map_err(ff_err("create the encoder context"))?;
    enc.set_width(spec.width);
    enc.set_height(spec.height);
    enc.set_format(ff::format::Pixel::YUV420P);
    let fps = i32::try_from(spec.fps).map_err(|_| err(format!("fps {} too large", spec.fps)))?;
    enc.set_time_base((1, fps));
    enc.set_frame_rate(Some((fps, 1)));
    enc.set_bit_rate(kbps as usize * 1000);
    enc.set_gop(gop);
    enc.set_max_b_frames(0);

    // A camera's rate control caps peaks: a VBV of 1.5x the average rate over 2 s.
    let (maxrate, bufsize) = (kbps + kbps / 2, kbps * 2);
    let mut dict = ff::Dictionary::new();
    dict.set("preset", &opts.preset);
    if let Some(p) = &opts.profile {
        dict.set("profile", p);
    }
    match codec {
        VideoCodec::H264 => dict.set(
            "x264-params",
            &format!(
                "scenecut=0:keyint={gop}:min-keyint={gop}:bframes=0:repeat-headers=1:\
                 vbv-maxrate={maxrate}:vbv-bufsize={bufsize}:log=0"
            ),
        ),
        // open-gop=0: key frames are IDR, not CRA, so every one is a clean entry point.
        VideoCodec::H265 => dict.set(
            "x265-params",
            &format!(
                "scenecut=0:keyint={gop}:min-keyint={gop}:bframes=0:repeat-headers=1:\
                 open-gop=0:vbv-maxrate={maxrate}:vbv-bufsize={bufsize}:log-level=error"
            ),
        ),
    }
    let mut enc = enc.open_with(dict).map_err(ff_err(
        "open the encoder (check the preset and profile names)",
    ))?;

    let mut renderer = Renderer::new(spec)?;
    let mut yuv = YuvFrame::new(spec.width, spec.height);
    let mut packet = ff::Packet::empty();
    let mut out = Vec::new();
    for i in 0..frames {
        renderer.render_into(i, &mut yuv);
        // A fresh frame each time: the encoder may still hold a reference to the last one.
        let mut frame = ff::frame::Video::new(ff::format::Pixel::YUV420P, spec.width, spec.height);
        copy_planes(&yuv, &mut frame);
        frame.set_pts(Some(i as i64));
        enc.send_frame(&frame)
            .map_err(ff_err("send a frame to the encoder"))?;
        drain(&mut enc, &mut packet, &mut out).map_err(ff_err("receive a packet"))?;
    }
    enc.send_eof().map_err(ff_err("flush the encoder"))?;
    drain(&mut enc, &mut packet, &mut out).map_err(ff_err("receive a packet"))?;
    if out.is_empty() {
        return Err(err("the encoder produced no data".into()));
    }
    Ok(out)
}

/// Renders and encodes like [`encode`], but keeps the Annex B stream in `cache_dir` under a
/// hash of everything that shapes it (spec, options, libavcodec version, renderer version),
/// so later runs with the same inputs skip rendering and encoding.
pub fn encode_cached(
    spec: &SceneSpec,
    opts: &EncodeOptions,
    cache_dir: &Path,
) -> Result<Clip, SimError> {
    let path = cache_path(spec, opts, cache_dir)?;
    let cache_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SimError::Cache { path, source }
    };
    match std::fs::read(&path) {
        // A truncated or foreign file is re-encoded and replaced, not trusted.
        Ok(data) => {
            if let Ok(clip) = checked_clip(spec, opts, &data) {
                return Ok(clip);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cache_err(&path)(e)),
    }
    let data = encode_annex_b(spec, opts)?;
    let clip = checked_clip(spec, opts, &data)?;
    std::fs::create_dir_all(cache_dir).map_err(cache_err(cache_dir))?;
    // Write then rename, so a concurrent reader never sees half a stream.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &data).map_err(cache_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(cache_err(&path))?;
    Ok(clip)
}

/// Bumped whenever the renderer's output for a given spec changes, to invalidate caches.
const RENDER_VERSION: u32 = 2;

/// Where [`encode_cached`] keeps the stream for `spec` and `opts`.
pub fn cache_path(
    spec: &SceneSpec,
    opts: &EncodeOptions,
    cache_dir: &Path,
) -> Result<PathBuf, SimError> {
    let spec_json = serde_json::to_string(spec).map_err(|e| SimError::Scene {
        reason: format!("cannot serialise the spec for the cache key: {e}"),
    })?;
    let key = format!(
        "xueliang-sim scene clip\nrender {RENDER_VERSION}\navcodec {}\n{spec_json}\n{} {} {} {} {:?}\n",
        ff::codec::version(),
        opts.codec,
        opts.bitrate_for(spec),
        opts.gop_for(spec.fps),
        opts.preset,
        opts.profile,
    );
    let hash = hex::encode(&Sha256::digest(key.as_bytes())[..16]);
    let ext = match opts.codec {
        VideoCodec::H264 => "h264",
        VideoCodec::H265 => "h265",
    };
    Ok(cache_dir.join(format!("{hash}.{ext}")))
}

/// Splits the stream and checks it is the loop it should be: one unit per frame, a key frame
/// exactly at every GOP start.
fn checked_clip(spec: &SceneSpec, opts: &EncodeOptions, data: &[u8]) -> Result<Clip, SimError> {
    let clip = clip_from_annex_b(opts.codec, data, spec.fps)?;
    let err = |reason: String| SimError::Encode {
        codec: opts.codec,
        encoder: encoder_name(opts.codec),
        reason,
    };
    if clip.units.len() as u64 != spec.frame_count() {
        return Err(err(format!(
            "the stream has {} pictures, the scene {} frames",
            clip.units.len(),
            spec.frame_count()
        )));
    }
    let gop = opts.gop_for(spec.fps) as usize;
    if let Some(i) = clip
        .units
        .iter()
        .enumerate()
        .position(|(i, u)| u.is_key != (i % gop == 0))
    {
        return Err(err(format!(
            "picture {i} is {}a key frame; expected key frames exactly every {gop}",
            if clip.units[i].is_key { "" } else { "not " }
        )));
    }
    Ok(clip)
}

fn copy_planes(yuv: &YuvFrame, frame: &mut ff::frame::Video) {
    let (w, h) = (yuv.width as usize, yuv.height as usize);
    let (cw, ch) = (yuv.chroma_width(), yuv.chroma_height());
    for (plane, src, pw, ph) in [(0, &yuv.y, w, h), (1, &yuv.u, cw, ch), (2, &yuv.v, cw, ch)] {
        let stride = frame.stride(plane);
        let dst = frame.data_mut(plane);
        for (row, s) in src.chunks_exact(pw).take(ph).enumerate() {
            dst[row * stride..row * stride + pw].copy_from_slice(s);
        }
    }
}

/// Moves every packet the encoder has ready into `out`.
fn drain(
    enc: &mut ff::encoder::Video,
    packet: &mut ff::Packet,
    out: &mut Vec<u8>,
) -> Result<(), ff::Error> {
    loop {
        match enc.receive_packet(packet) {
            Ok(()) => {
                if let Some(data) = packet.data() {
                    out.extend_from_slice(data);
                }
            }
            Err(ff::Error::Eof)
            | Err(ff::Error::Other {
                errno: ff::error::EAGAIN,
            }) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}
