//! Test support for the real-peer tests: running ffmpeg/ffprobe, a minimal Annex B parser that
//! groups NAL units into access units, and avcC / hvcC records built from parameter sets.
//!
//! In production the ingest gets the configuration record from the RTSP library; building one
//! here only stands in for that.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use xueliang_core::Timestamp;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};
use xueliang_record::mp4::{Fragment, FragmentBuilder, init_segment};

/// Where stream times start, as an RTP session's extended timestamps would: past the 32-bit
/// wrap, far from zero.
pub const PTS_ORIGIN: i64 = (1 << 32) + 12_345;

/// Runs a tool, failing the test with its stderr if it exits non-zero. Returns stdout and
/// stderr.
pub fn run(program: &str, args: &[&str]) -> (Vec<u8>, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (deploy/install-deps.sh installs it): {e}")
        });
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed with {}: {stderr}",
        out.status
    );
    (out.stdout, stderr)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Whether this ffmpeg build has an encoder (`ffmpeg -encoders` lists it).
pub fn has_encoder(name: &str) -> bool {
    let (out, _) = run("ffmpeg", &["-hide_banner", "-encoders"]);
    String::from_utf8_lossy(&out)
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(name))
}

/// A camera stream stand-in: what the ingest would hand the recorder, plus the reference file
/// ffmpeg muxed from the same encode, to compare decoded pictures against.
pub struct Source {
    pub params: Arc<VideoParams>,
    pub frames: Vec<VideoFrame>,
    pub reference: PathBuf,
    /// The encoder's frame duration in 90 kHz ticks.
    pub frame_ticks: i64,
}

/// Encodes 4 s of `testsrc2` at 320x240, 25 fps, one key frame a second.
///
/// The encoder writes into an MP4 first because only a container keeps each packet's real
/// pts (a raw elementary stream has none, and with B-frames they cannot be guessed from frame
/// order); the Annex B stream is then extracted from it and parsed like camera data would be.
pub fn encode(dir: &Path, codec: VideoCodec, bframes: u32) -> Source {
    let reference = dir.join(format!("reference-{codec}-bf{bframes}.mp4"));
    let elementary = dir.join(format!("source-{codec}-bf{bframes}.es"));
    let bf = bframes.to_string();
    let mut args = vec![
        "-v",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=25",
        "-t",
        "4",
        "-pix_fmt",
        "yuv420p",
    ];
    match codec {
        VideoCodec::H264 => args.extend(["-c:v", "libx264", "-g", "25", "-bf", &bf]),
        VideoCodec::H265 => args.extend([
            "-c:v",
            "libx265",
            "-x265-params",
            "keyint=25:log-level=error",
        ]),
    }
    args.push(path_str(&reference));
    run("ffmpeg", &args);
    let (bsf, format) = match codec {
        VideoCodec::H264 => ("h264_mp4toannexb", "h264"),
        VideoCodec::H265 => ("hevc_mp4toannexb", "hevc"),
    };
    run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-y",
            "-i",
            path_str(&reference),
            "-c:v",
            "copy",
            "-bsf:v",
            bsf,
            "-f",
            format,
            path_str(&elementary),
        ],
    );

    let probe = ffprobe_json(
        &reference,
        &[
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=time_base,width,height:packet=pts,dts,flags",
        ],
    );
    let stream = &probe["streams"][0];
    let (num, den) = parse_ratio(stream["time_base"].as_str().expect("time_base"));
    let to_90k = |t: i64| {
        assert_eq!(
            t * 90_000 * num % den,
            0,
            "time {t} in {num}/{den} is not a whole 90 kHz tick"
        );
        t * 90_000 * num / den
    };
    // File order of a single-track MP4 is decode order.
    let packets: Vec<(i64, bool)> = probe["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            let pts = p["pts"].as_i64().expect("every packet has a pts");
            let key = p["flags"].as_str().expect("flags").contains('K');
            (PTS_ORIGIN + to_90k(pts), key)
        })
        .collect();

    let es = std::fs::read(&elementary).expect("read elementary stream");
    let (units, sets) = access_units(codec, &es);
    assert_eq!(
        units.len(),
        packets.len(),
        "Annex B parser found {} access units, ffprobe {} packets",
        units.len(),
        packets.len()
    );
    let width = stream["width"].as_u64().expect("width") as u32;
    let height = stream["height"].as_u64().expect("height") as u32;
    let (decoder_config, rfc6381) = match codec {
        VideoCodec::H264 => avcc(&sets.sps, &sets.pps),
        VideoCodec::H265 => hvcc(
            sets.vps.as_deref().expect("HEVC stream without a VPS"),
            &sets.sps,
            &sets.pps,
        ),
    };
    let params = Arc::new(VideoParams {
        codec,
        width,
        height,
        decoder_config: Bytes::from(decoder_config),
        rfc6381,
        pixel_aspect: None,
    });
    let frames = units
        .into_iter()
        .zip(&packets)
        .enumerate()
        .map(|(i, (au, &(pts, key)))| {
            assert_eq!(
                au.is_key, key,
                "access unit {i}: key flag disagrees with ffprobe"
            );
            VideoFrame {
                pts,
                wall: Timestamp::from_millis(1_700_000_000_000 + (pts - PTS_ORIGIN) / 90),
                is_key: au.is_key,
                data: Bytes::from(au.data),
                params: params.clone(),
                loss: 0,
            }
        })
        .collect();
    Source {
        params,
        frames,
        reference,
        frame_ticks: 90_000 / 25,
    }
}

fn parse_ratio(s: &str) -> (i64, i64) {
    let (a, b) = s.split_once('/').expect("n/d");
    (a.parse().expect("num"), b.parse().expect("den"))
}

/// Muxes frames the way the recorder will: one fragment per GOP, cut when the next key frame
/// arrives (so its pts is known).
pub fn mux_by_gop(frames: &[VideoFrame]) -> Vec<Fragment> {
    let mut b = FragmentBuilder::new();
    let mut out = Vec::new();
    for f in frames {
        if f.is_key && !b.is_empty() {
            assert!(b.starts_with_key());
            out.push(b.finish(out.len() as u32 + 1, Some(f.pts)));
        }
        b.push(f);
    }
    out.push(b.finish(out.len() as u32 + 1, None));
    out
}

/// Writes fragments as one recording file the way the recorder must: numbered from 1, with
/// decode times relative to the file's first fragment. (Left on the session timeline, a file
/// would start hours into its own presentation timeline, as MP4 has no other notion of start.)
/// Returns the fragments as written and the session decode time that became 0.
pub fn write_file(
    path: &Path,
    params: &VideoParams,
    fragments: &[Fragment],
) -> (Vec<Fragment>, i64) {
    let origin = fragments[0].base_dts;
    let mut bytes = init_segment(params).expect("init segment");
    let mut written = Vec::with_capacity(fragments.len());
    for (i, f) in fragments.iter().enumerate() {
        let mut f = f.clone();
        f.rebase(i as u32 + 1, f.base_dts - origin).expect("rebase");
        bytes.extend_from_slice(&f.bytes);
        written.push(f);
    }
    std::fs::write(path, bytes).expect("write mp4");
    (written, origin)
}

/// `ffprobe -v error ... -of json`, asserting it printed nothing on stderr.
pub fn ffprobe_json(path: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-v", "error"];
    all.extend_from_slice(args);
    all.extend(["-of", "json", path_str(path)]);
    let (out, stderr) = run("ffprobe", &all);
    assert!(
        stderr.trim().is_empty(),
        "ffprobe {path:?} complained: {stderr}"
    );
    serde_json::from_slice(&out).expect("ffprobe JSON")
}

/// MD5 of every decoded picture in presentation order.
pub fn frame_md5s(path: &Path) -> Vec<String> {
    let (out, stderr) = run(
        "ffmpeg",
        &[
            "-v",
            "error",
            "-i",
            path_str(path),
            "-map",
            "0:v:0",
            "-fps_mode",
            "passthrough",
            "-f",
            "framemd5",
            "-",
        ],
    );
    assert!(
        stderr.trim().is_empty(),
        "ffmpeg decoding {path:?} complained: {stderr}"
    );
    String::from_utf8_lossy(&out)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit(',').next().expect("md5 column").trim().to_owned())
        .collect()
}

/// Decodes the whole file with ffmpeg, failing on any error it reports.
pub fn decode_cleanly(path: &Path) {
    let (_, stderr) = run(
        "ffmpeg",
        &["-v", "error", "-i", path_str(path), "-f", "null", "-"],
    );
    assert!(
        stderr.trim().is_empty(),
        "ffmpeg decoding {path:?} complained: {stderr}"
    );
}

// ---- Annex B ----

/// NAL units between start codes, without the trailing zero bytes that belong to the next
/// start code.
pub fn split_nals(es: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= es.len() {
        if es[i] == 0 && es[i + 1] == 0 && es[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = starts.get(n + 1).map_or(es.len(), |&next| next - 3);
            let mut nal = &es[s..end];
            while let [rest @ .., 0] = nal {
                nal = rest;
            }
            nal
        })
        .filter(|n| !n.is_empty())
        .collect()
}

pub struct AccessUnit {
    pub is_key: bool,
    /// 4-byte length-prefixed NAL units, parameter sets and delimiters removed.
    pub data: Vec<u8>,
}

#[derive(Default)]
pub struct ParameterSets {
    pub vps: Option<Vec<u8>>,
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
}

enum NalKind {
    /// A slice; `first` if it is the first slice of a picture.
    Vcl {
        first: bool,
        key: bool,
    },
    ParameterSet(usize),
    /// Delimiter, SEI and the like: starts a new access unit after a picture.
    Prefix {
        keep: bool,
    },
    /// Belongs to the current access unit (suffix SEI, end of sequence, filler...).
    Suffix,
}

fn classify(codec: VideoCodec, nal: &[u8]) -> NalKind {
    match codec {
        VideoCodec::H264 => match nal[0] & 0x1f {
            // first_mb_in_slice is ue(v); 0 is the single bit 1.
            t @ 1..=5 => NalKind::Vcl {
                first: nal[1] & 0x80 != 0,
                key: t == 5,
            },
            7 => NalKind::ParameterSet(1),
            8 => NalKind::ParameterSet(2),
            9 => NalKind::Prefix { keep: false },
            6 | 14..=18 => NalKind::Prefix { keep: true },
            _ => NalKind::Suffix,
        },
        VideoCodec::H265 => match (nal[0] >> 1) & 0x3f {
            t @ 0..=31 => NalKind::Vcl {
                first: nal[2] & 0x80 != 0,
                key: (16..=21).contains(&t),
            },
            32 => NalKind::ParameterSet(0),
            33 => NalKind::ParameterSet(1),
            34 => NalKind::ParameterSet(2),
            35 => NalKind::Prefix { keep: false },
            39 | 41..=44 | 48..=55 => NalKind::Prefix { keep: true },
            _ => NalKind::Suffix,
        },
    }
}

/// Groups an Annex B stream into access units (ITU-T H.264 §7.4.1.2.3 / H.265 §7.4.2.4.4:
/// a new one starts at a delimiter, parameter set or prefix SEI after a picture, or at the
/// first slice of the next picture). Parameter sets must not change mid-stream.
pub fn access_units(codec: VideoCodec, es: &[u8]) -> (Vec<AccessUnit>, ParameterSets) {
    let mut units: Vec<AccessUnit> = Vec::new();
    let mut sets = ParameterSets::default();
    let mut current = AccessUnit {
        is_key: false,
        data: Vec::new(),
    };
    let mut has_picture = false;
    let mut close = |current: &mut AccessUnit, has_picture: &mut bool| {
        if *has_picture {
            units.push(std::mem::replace(
                current,
                AccessUnit {
                    is_key: false,
                    data: Vec::new(),
                },
            ));
            *has_picture = false;
        }
    };
    for nal in split_nals(es) {
        let append = |au: &mut AccessUnit| {
            au.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            au.data.extend_from_slice(nal);
        };
        match classify(codec, nal) {
            NalKind::Vcl { first, key } => {
                if first {
                    close(&mut current, &mut has_picture);
                }
                current.is_key |= key;
                has_picture = true;
                append(&mut current);
            }
            NalKind::ParameterSet(which) => {
                close(&mut current, &mut has_picture);
                let slot = match which {
                    0 => sets.vps.get_or_insert_with(Vec::new),
                    1 => &mut sets.sps,
                    _ => &mut sets.pps,
                };
                assert!(
                    slot.is_empty() || slot.as_slice() == nal,
                    "parameter set changed mid-stream"
                );
                *slot = nal.to_vec();
            }
            NalKind::Prefix { keep } => {
                close(&mut current, &mut has_picture);
                if keep {
                    append(&mut current);
                }
            }
            NalKind::Suffix => append(&mut current),
        }
    }
    close(&mut current, &mut has_picture);
    assert!(
        !sets.sps.is_empty() && !sets.pps.is_empty(),
        "no SPS/PPS in stream"
    );
    (units, sets)
}

// ---- configuration records ----

/// AVCDecoderConfigurationRecord (14496-15 §5.3.3.1) with one SPS and one PPS, 4-byte lengths.
pub fn avcc(sps: &[u8], pps: &[u8]) -> (Vec<u8>, String) {
    let mut r = vec![1, sps[1], sps[2], sps[3], 0xfc | 3, 0xe0 | 1];
    r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    r.extend_from_slice(sps);
    r.push(1);
    r.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    r.extend_from_slice(pps);
    let name = format!("avc1.{:02x}{:02x}{:02x}", sps[1], sps[2], sps[3]);
    (r, name)
}

/// Removes emulation-prevention bytes (00 00 03 → 00 00).
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn u(&mut self, n: usize) -> u64 {
        let mut v = 0;
        for _ in 0..n {
            let bit = (self.data[self.pos / 8] >> (7 - self.pos % 8)) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        v
    }

    fn ue(&mut self) -> u64 {
        let mut zeros = 0;
        while self.u(1) == 0 {
            zeros += 1;
        }
        (1 << zeros) - 1 + self.u(zeros)
    }
}

/// HEVCDecoderConfigurationRecord (14496-15 §8.3.3.1) with VPS, SPS and PPS arrays, 4-byte
/// lengths. Profile, tier, level and format fields come from the SPS.
pub fn hvcc(vps: &[u8], sps: &[u8], pps: &[u8]) -> (Vec<u8>, String) {
    let body = rbsp(&sps[2..]);
    let mut bits = Bits {
        data: &body,
        pos: 0,
    };
    bits.u(4); // sps_video_parameter_set_id
    let max_sub_layers_minus1 = bits.u(3) as usize;
    let temporal_id_nested = bits.u(1) as u8;
    // general profile_tier_level: 12 bytes, byte aligned here
    let ptl: [u8; 12] = body[1..13].try_into().expect("12 bytes");
    bits.pos += 96;
    let mut present = Vec::new();
    for _ in 0..max_sub_layers_minus1 {
        present.push((bits.u(1), bits.u(1)));
    }
    if max_sub_layers_minus1 > 0 {
        bits.pos += 2 * (8 - max_sub_layers_minus1);
    }
    for (profile, level) in present {
        bits.pos += 88 * profile as usize + 8 * level as usize;
    }
    bits.ue(); // sps_seq_parameter_set_id
    let chroma_format = bits.ue() as u8;
    if chroma_format == 3 {
        bits.u(1);
    }
    bits.ue(); // width
    bits.ue(); // height
    if bits.u(1) == 1 {
        for _ in 0..4 {
            bits.ue();
        }
    }
    let luma_minus8 = bits.ue() as u8;
    let chroma_minus8 = bits.ue() as u8;

    let mut r = vec![1];
    r.extend_from_slice(&ptl);
    r.extend_from_slice(&[0xf0, 0x00, 0xfc, 0xfc | chroma_format, 0xf8 | luma_minus8]);
    r.extend_from_slice(&[0xf8 | chroma_minus8, 0, 0]);
    let layers = (max_sub_layers_minus1 as u8 + 1) & 0x07;
    r.push((layers << 3) | (temporal_id_nested << 2) | 3);
    r.push(3);
    for (nal_type, nal) in [(32u8, vps), (33, sps), (34, pps)] {
        r.push(0x80 | nal_type);
        r.extend_from_slice(&1u16.to_be_bytes());
        r.extend_from_slice(&(nal.len() as u16).to_be_bytes());
        r.extend_from_slice(nal);
    }
    let tier = if ptl[0] & 0x20 != 0 { 'H' } else { 'L' };
    let compat = u32::from_be_bytes(ptl[1..5].try_into().expect("4 bytes")).reverse_bits();
    let mut name = format!("hvc1.{}.{compat:X}.{tier}{}", ptl[0] & 0x1f, ptl[11]);
    let mut constraints = ptl[5..11].to_vec();
    while constraints.last() == Some(&0) {
        constraints.pop();
    }
    for b in constraints {
        name += &format!(".{b:02X}");
    }
    (r, name)
}
