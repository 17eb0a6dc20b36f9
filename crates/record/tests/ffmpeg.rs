//! Real-peer tests: streams from real encoders (x264, x265) muxed by this crate must be read,
//! timed and decoded by ffmpeg/ffprobe exactly like the encoder's own MP4 output.

mod support;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;
use support::{Source, decode_cleanly, encode, ffprobe_json, frame_md5s, mux_by_gop, write_file};
use xueliang_core::media::VideoCodec;
use xueliang_record::mp4::{self, Fragment, TIMESCALE, init_segment, rewrite_moof};

/// What ffprobe says about a file: the stream, and every frame's pts in presentation order.
struct Probe {
    stream: Value,
    format: Value,
    frame_pts: Vec<i64>,
    /// (pts, dts) of every packet, in file (decode) order.
    packets: Vec<(i64, i64)>,
}

fn probe(path: &Path) -> Probe {
    // Asking for frames and packets at once interleaves them into one array; ask twice.
    let v = ffprobe_json(
        path,
        &[
            "-show_streams",
            "-show_format",
            "-show_frames",
            "-select_streams",
            "v:0",
        ],
    );
    let frame_pts = v["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["pts"].as_i64().expect("every frame has a pts"))
        .collect();
    let packets = ffprobe_json(path, &["-show_packets", "-select_streams", "v:0"])["packets"]
        .as_array()
        .expect("packets")
        .iter()
        .map(|p| {
            (
                p["pts"].as_i64().expect("pts"),
                p["dts"].as_i64().expect("dts"),
            )
        })
        .collect();
    Probe {
        stream: v["streams"][0].clone(),
        format: v["format"].clone(),
        frame_pts,
        packets,
    }
}

/// Checks a muxed file against its source: codec, size, frame count, duration, presentation
/// times, decoded pictures, and that scanning the file gives back what the muxer reported.
/// `origin`: the session time that is 0 in the file.
fn check_against_source(path: &Path, src: &Source, fragments: &[Fragment], origin: i64) {
    let p = probe(path);
    let codec_name = match src.params.codec {
        VideoCodec::H264 => "h264",
        VideoCodec::H265 => "hevc",
    };
    assert_eq!(p.stream["codec_name"], codec_name);
    assert_eq!(p.stream["codec_tag_string"], &src.params.rfc6381[..4]);
    assert_eq!(p.stream["width"], src.params.width);
    assert_eq!(p.stream["height"], src.params.height);
    assert_eq!(p.stream["time_base"], format!("1/{TIMESCALE}"));
    assert_eq!(p.frame_pts.len(), src.frames.len(), "decoded frame count");

    // Presentation order and times are the source's, to the tick.
    let mut want: Vec<i64> = src.frames.iter().map(|f| f.pts - origin).collect();
    want.sort_unstable();
    assert_eq!(p.frame_pts, want, "presented pts");

    let seconds = src.frames.len() as f64 * src.frame_ticks as f64 / f64::from(TIMESCALE);
    let duration: f64 = p.format["duration"]
        .as_str()
        .expect("format duration")
        .parse()
        .expect("duration number");
    let frame = src.frame_ticks as f64 / f64::from(TIMESCALE);
    assert!(
        (duration - seconds).abs() <= frame,
        "duration {duration} s, expected {seconds} s ± one frame"
    );

    // The same pictures, in the same order, as the encoder's own MP4.
    assert_eq!(
        frame_md5s(path),
        frame_md5s(&src.reference),
        "decoded pictures"
    );
    decode_cleanly(path);

    let mut f = File::open(path).expect("open");
    let idx = mp4::scan(&mut f).expect("scan");
    assert!(idx.is_clean(), "{:?}", idx.tail);
    assert_eq!(idx.fragments.len(), fragments.len());
    let mut offset = idx.init_len;
    for (got, frag) in idx.fragments.iter().zip(fragments) {
        assert_eq!(*got, frag.info(offset));
        offset += frag.bytes.len() as u64;
    }
    let scanned = idx.params.expect("scanned params");
    assert_eq!(scanned.decoder_config, src.params.decoder_config);
    assert_eq!(scanned.rfc6381, src.params.rfc6381);
}

#[test]
fn h264_without_b_frames_plays_with_dts_equal_to_pts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = encode(dir.path(), VideoCodec::H264, 0);
    let fragments = mux_by_gop(&src.frames);
    assert!(fragments.len() >= 4, "one fragment per 1 s GOP");
    let out = dir.path().join("out.mp4");
    let (written, origin) = write_file(&out, &src.params, &fragments);
    assert_eq!(origin, src.frames[0].pts);
    check_against_source(&out, &src, &written, origin);

    let p = probe(&out);
    assert_eq!(p.packets.len(), src.frames.len());
    for (i, ((pts, dts), f)) in p.packets.iter().zip(&src.frames).enumerate() {
        let t = f.pts - origin;
        assert_eq!((*pts, *dts), (t, t), "packet {i}: dts must equal pts");
    }

    // A stated pixel aspect ratio reaches players through pasp.
    let mut anamorphic = (*src.params).clone();
    anamorphic.pixel_aspect = Some((4, 3));
    let out = dir.path().join("anamorphic.mp4");
    write_file(&out, &anamorphic, &fragments);
    let p = probe(&out);
    assert_eq!(p.stream["sample_aspect_ratio"], "4:3");
    assert_eq!(p.frame_pts.len(), src.frames.len());
}

#[test]
fn h264_with_b_frames_keeps_presentation_order_and_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = encode(dir.path(), VideoCodec::H264, 2);
    let reordered = src.frames.windows(2).any(|w| w[1].pts < w[0].pts);
    assert!(reordered, "x264 -bf 2 should have produced B-frames");
    let fragments = mux_by_gop(&src.frames);
    let out = dir.path().join("out.mp4");
    let (written, origin) = write_file(&out, &src.params, &fragments);
    check_against_source(&out, &src, &written, origin);

    // Decode order is kept, dts strictly increases and never runs ahead of pts.
    let p = probe(&out);
    for (i, ((pts, dts), f)) in p.packets.iter().zip(&src.frames).enumerate() {
        assert_eq!(*pts, f.pts - origin, "packet {i} pts");
        assert!(dts <= pts, "packet {i}: dts {dts} after pts {pts}");
    }
    assert!(
        p.packets.windows(2).all(|w| w[1].1 > w[0].1),
        "dts strictly increasing"
    );
}

#[test]
fn h265_plays_with_open_gops_and_b_frames() {
    if !support::has_encoder("libx265") {
        eprintln!("skipping the H.265 case: this ffmpeg build has no libx265 encoder");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = encode(dir.path(), VideoCodec::H265, 0);
    // x265's defaults: B-frames, and open GOPs whose key frames (CRA) are followed in decode
    // order by leading pictures shown before them, which belong to the previous GOP in time.
    let leading = src
        .frames
        .windows(2)
        .any(|w| w[0].is_key && w[1].pts < w[0].pts);
    assert!(
        leading,
        "expected open GOPs with leading pictures from x265"
    );
    let fragments = mux_by_gop(&src.frames);
    let out = dir.path().join("out.mp4");
    let (written, origin) = write_file(&out, &src.params, &fragments);
    check_against_source(&out, &src, &written, origin);
}

/// Moves the moof+mdat pairs of `file`, as indexed by `scan`, into `out`, renumbering them
/// from `sequence` and placing the first at decode time `base`. Returns the next sequence
/// number and decode time.
fn append_fragments(file: &Path, out: &mut Vec<u8>, mut sequence: u32, base: i64) -> (u32, i64) {
    let mut f = File::open(file).expect("open");
    let idx = mp4::scan(&mut f).expect("scan");
    assert!(idx.is_clean());
    let first = idx.fragments[0].base_dts;
    let mut end = base;
    for info in &idx.fragments {
        let mut bytes = vec![0; info.len as usize];
        f.seek(SeekFrom::Start(info.offset)).expect("seek");
        f.read_exact(&mut bytes).expect("read");
        let dts = base + (info.base_dts - first);
        rewrite_moof(&mut bytes[..info.moof_len as usize], sequence, dts).expect("rewrite");
        out.extend_from_slice(&bytes);
        sequence += 1;
        end = dts + info.duration;
    }
    (sequence, end)
}

#[test]
fn files_cut_from_one_session_play_back_to_back_after_rewrite_moof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = encode(dir.path(), VideoCodec::H264, 2);
    let fragments = mux_by_gop(&src.frames);
    assert!(fragments.len() >= 3);

    // What a recorder does at a file boundary: each file numbers its fragments from 1 and
    // starts its decode times at 0.
    let split = fragments.len() / 2;
    let mut files = Vec::new();
    for (name, part) in [
        ("a.mp4", &fragments[..split]),
        ("b.mp4", &fragments[split..]),
    ] {
        let mut part: Vec<Fragment> = part.to_vec();
        let first = part[0].base_dts;
        for (i, frag) in part.iter_mut().enumerate() {
            let base = frag.base_dts - first;
            frag.rebase(i as u32 + 1, base).expect("rebase");
        }
        let path = dir.path().join(name);
        write_file(&path, &src.params, &part);
        let p = probe(&path);
        let frames: u32 = part.iter().map(|f| f.frames).sum();
        assert_eq!(
            p.frame_pts.len(),
            frames as usize,
            "{name} plays on its own"
        );
        decode_cleanly(&path);
        files.push(path);
    }

    // An export joins them: one init segment, then every fragment renumbered onto one
    // continuous timeline.
    let mut joined = init_segment(&src.params).expect("init");
    let (sequence, end) = append_fragments(&files[0], &mut joined, 1, 0);
    let (_, end) = append_fragments(&files[1], &mut joined, sequence, end);
    let out = dir.path().join("joined.mp4");
    std::fs::write(&out, &joined).expect("write");

    let p = probe(&out);
    assert_eq!(p.frame_pts.len(), src.frames.len());
    let mut want: Vec<i64> = src.frames.iter().map(|f| f.pts).collect();
    want.sort_unstable();
    let shift = p.frame_pts[0] - want[0];
    let got: Vec<i64> = p.frame_pts.iter().map(|t| t - shift).collect();
    assert_eq!(got, want, "presentation times continue across the join");
    assert_eq!(
        frame_md5s(&out),
        frame_md5s(&src.reference),
        "decoded pictures"
    );
    decode_cleanly(&out);

    let idx = mp4::scan(&mut File::open(&out).expect("open")).expect("scan");
    let sequences: Vec<u32> = idx.fragments.iter().map(|f| f.sequence).collect();
    assert_eq!(sequences, (1..=fragments.len() as u32).collect::<Vec<_>>());
    assert_eq!(idx.fragments[0].base_dts, 0);
    for w in idx.fragments.windows(2) {
        assert_eq!(
            w[1].base_dts,
            w[0].base_dts + w[0].duration,
            "decode time continuous"
        );
    }
    assert_eq!(idx.duration(), end);
}
