//! Byte-level tests of the writer, scanner and patcher against each other and against the box
//! layout 14496-12 prescribes.

use std::io::Cursor;
use std::sync::Arc;

use xueliang_core::media::{VideoCodec, VideoParams};

use super::boxes::{BoxRange, children};
use super::testutil::{Gop, Lcg, decode_order, frame, h264_params, split_at_keys};
use super::*;

/// Boxes whose body is a sequence of boxes, and how many bytes of fields precede those.
fn container_prefix(box_type: &[u8; 4]) -> Option<usize> {
    match box_type {
        b"moov" | b"trak" | b"mdia" | b"minf" | b"dinf" | b"stbl" | b"mvex" | b"moof" | b"traf" => {
            Some(0)
        }
        b"stsd" | b"dref" => Some(8),
        // VisualSampleEntry fields
        b"avc1" | b"hvc1" => Some(78),
        _ => None,
    }
}

/// Every box as "path start end", walking containers recursively. `children` fails unless
/// the child boxes tile their parent's body exactly, so a successful walk means every size
/// adds up.
fn tree(buf: &[u8]) -> Vec<(String, BoxRange)> {
    fn walk(
        buf: &[u8],
        range: std::ops::Range<usize>,
        path: &str,
        out: &mut Vec<(String, BoxRange)>,
    ) {
        for b in children(buf, range, FourCc(*b"test"), 0).expect("boxes tile their parent") {
            let name = String::from_utf8_lossy(&b.box_type.0).into_owned();
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            out.push((p.clone(), b));
            if let Some(prefix) = container_prefix(&b.box_type.0) {
                walk(buf, b.body + prefix..b.end, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(buf, 0..buf.len(), "", &mut out);
    out
}

fn paths(buf: &[u8]) -> Vec<String> {
    tree(buf).into_iter().map(|(p, _)| p).collect()
}

fn body<'a>(buf: &'a [u8], path: &str) -> &'a [u8] {
    let (_, b) = tree(buf)
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("no {path}"));
    &buf[b.body..b.end]
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[test]
fn init_segment_has_the_fragmented_layout() {
    let mut params = (*h264_params()).clone();
    params.pixel_aspect = Some((4, 3));
    let init = init_segment(&params).expect("init");
    assert_eq!(
        paths(&init),
        [
            "ftyp",
            "moov",
            "moov/mvhd",
            "moov/trak",
            "moov/trak/tkhd",
            "moov/trak/mdia",
            "moov/trak/mdia/mdhd",
            "moov/trak/mdia/hdlr",
            "moov/trak/mdia/minf",
            "moov/trak/mdia/minf/vmhd",
            "moov/trak/mdia/minf/dinf",
            "moov/trak/mdia/minf/dinf/dref",
            "moov/trak/mdia/minf/dinf/dref/url ",
            "moov/trak/mdia/minf/stbl",
            "moov/trak/mdia/minf/stbl/stsd",
            "moov/trak/mdia/minf/stbl/stsd/avc1",
            "moov/trak/mdia/minf/stbl/stsd/avc1/avcC",
            "moov/trak/mdia/minf/stbl/stsd/avc1/pasp",
            "moov/trak/mdia/minf/stbl/stts",
            "moov/trak/mdia/minf/stbl/stsc",
            "moov/trak/mdia/minf/stbl/stsz",
            "moov/trak/mdia/minf/stbl/stco",
            "moov/mvex",
            "moov/mvex/trex",
        ]
    );
    let ftyp = body(&init, "ftyp");
    assert_eq!(&ftyp[..4], b"isom");
    let brands: Vec<&[u8]> = ftyp[8..].chunks(4).collect();
    for brand in [b"isom", b"iso6", b"mp41", b"avc1"] {
        assert!(brands.contains(&brand.as_slice()), "{brands:?}");
    }
    assert_eq!(be32(body(&init, "moov/mvhd"), 12), TIMESCALE);
    let tkhd = body(&init, "moov/trak/tkhd");
    assert_eq!(be32(tkhd, 12), 1, "track id");
    // Display width is stretched by the 4:3 pixel aspect.
    assert_eq!(be32(tkhd, 76), (params.width * 4 / 3) << 16);
    assert_eq!(be32(tkhd, 80), params.height << 16);
    assert_eq!(be32(body(&init, "moov/trak/mdia/mdhd"), 12), TIMESCALE);
    assert_eq!(&body(&init, "moov/trak/mdia/hdlr")[8..12], b"vide");
    let entry = body(&init, "moov/trak/mdia/minf/stbl/stsd/avc1");
    assert_eq!(
        u16::from_be_bytes([entry[24], entry[25]]) as u32,
        params.width
    );
    assert_eq!(
        u16::from_be_bytes([entry[26], entry[27]]) as u32,
        params.height
    );
    assert_eq!(
        body(&init, "moov/trak/mdia/minf/stbl/stsd/avc1/avcC"),
        &params.decoder_config[..]
    );
    let pasp = body(&init, "moov/trak/mdia/minf/stbl/stsd/avc1/pasp");
    assert_eq!((be32(pasp, 0), be32(pasp, 4)), (4, 3));
    assert_eq!(be32(body(&init, "moov/mvex/trex"), 4), 1, "trex track id");

    // Without a pixel aspect there is no pasp, and H.265 gets hvc1/hvcC.
    let mut hevc = params.clone();
    hevc.codec = VideoCodec::H265;
    hevc.pixel_aspect = None;
    let mut hvcc = vec![1u8; 23];
    hvcc[21] = 0x0f; // 4-byte NAL lengths
    hvcc[22] = 0;
    hevc.decoder_config = hvcc.into();
    let init = init_segment(&hevc).expect("hevc init");
    let p = paths(&init);
    assert!(
        p.contains(&"moov/trak/mdia/minf/stbl/stsd/hvc1/hvcC".to_owned()),
        "{p:?}"
    );
    assert!(!p.iter().any(|p| p.ends_with("pasp")));
}

#[test]
fn init_segment_rejects_unwritable_params() {
    let mut p = (*h264_params()).clone();
    p.width = 1 << 16;
    assert!(matches!(init_segment(&p), Err(Mp4Error::InvalidParams(_))));
}

/// A generated session: init, then one fragment per GOP, plus what went in.
struct Session {
    params: Arc<VideoParams>,
    file: Vec<u8>,
    init_len: usize,
    fragments: Vec<Fragment>,
    /// (pts, is_key, sample bytes) in decode order.
    frames: Vec<(i64, bool, Vec<u8>)>,
}

fn session(seed: u64, gop: Gop) -> Session {
    let params = h264_params();
    let mut rng = Lcg::new(seed);
    let order = decode_order(gop);
    let base = rng.range(0, 1 << 33) as i64;
    let pts: Vec<i64> = order
        .iter()
        .map(|(p, _)| base + *p as i64 * 3_600)
        .collect();
    let mut b = FragmentBuilder::new();
    let mut file = init_segment(&params).expect("init");
    let init_len = file.len();
    let mut fragments = Vec::new();
    let mut frames = Vec::new();
    // One fragment per GOP, but some GOPs cut in two, as a recorder does when a GOP is longer
    // than its recovery point objective: those fragments start with a non-key frame.
    let mut ranges = Vec::new();
    for r in split_at_keys(&order) {
        if r.len() >= 2 && rng.next().is_multiple_of(2) {
            let mid = rng.range(r.start as u64 + 1, r.end as u64 - 1) as usize;
            ranges.extend([r.start..mid, mid..r.end]);
        } else {
            ranges.push(r);
        }
    }
    for (n, r) in ranges.into_iter().enumerate() {
        for i in r.clone() {
            let f = frame(
                &params,
                pts[i],
                order[i].1,
                rng.range(0, 60) as usize,
                i as u8,
            );
            frames.push((f.pts, f.is_key, f.data.to_vec()));
            b.push(&f);
        }
        assert_eq!(b.len(), r.len());
        let frag = b.finish(n as u32 + 1, pts.get(r.end).copied());
        assert!(b.is_empty());
        file.extend_from_slice(&frag.bytes);
        fragments.push(frag);
    }
    Session {
        params,
        file,
        init_len,
        fragments,
        frames,
    }
}

const GOP: Gop = Gop {
    frames: 40,
    length: 9,
    bframes: 2,
    pyramid: true,
};

#[test]
fn fragments_have_the_prescribed_layout_and_carry_the_samples() {
    let s = session(1, GOP);
    let mut consumed = 0;
    for frag in &s.fragments {
        assert_eq!(
            paths(&frag.bytes),
            [
                "moof",
                "moof/mfhd",
                "moof/traf",
                "moof/traf/tfhd",
                "moof/traf/tfdt",
                "moof/traf/trun",
                "mdat"
            ]
        );
        let b = &frag.bytes;
        assert_eq!(be32(body(b, "moof/mfhd"), 4), frag.sequence);
        let tfhd = body(b, "moof/traf/tfhd");
        assert_eq!(be32(tfhd, 0), TFHD_DEFAULT_BASE_IS_MOOF);
        assert_eq!(be32(tfhd, 4), 1);
        let tfdt = body(b, "moof/traf/tfdt");
        assert_eq!(tfdt[0], 1, "tfdt version 1");
        assert_eq!(
            u64::from_be_bytes(tfdt[4..12].try_into().expect("8")),
            frag.base_dts as u64
        );
        let trun = body(b, "moof/traf/trun");
        assert_eq!(
            be32(trun, 0),
            (1 << 24) | TRUN_FLAGS,
            "trun version 1, all fields"
        );
        let count = be32(trun, 4) as usize;
        assert_eq!(count as u32, frag.frames);
        assert_eq!(trun.len(), 12 + 16 * count);
        let mdat_start = frag.moof_len() as usize;
        assert_eq!(
            be32(trun, 8) as usize,
            mdat_start + 8,
            "data_offset → mdat payload"
        );
        let mdat = body(b, "mdat");
        let mut at = 0;
        let mut dts = frag.base_dts;
        let mut first_pts = i64::MAX;
        for i in 0..count {
            let rec = &trun[12 + 16 * i..];
            let (duration, size, flags) = (be32(rec, 0), be32(rec, 4) as usize, be32(rec, 8));
            let cto = be32(rec, 12) as i32;
            let (pts, key, data) = &s.frames[consumed + i];
            assert_eq!(
                &mdat[at..at + size],
                &data[..],
                "sample {} bytes",
                consumed + i
            );
            assert_eq!(dts + i64::from(cto), *pts, "sample {} pts", consumed + i);
            assert!(cto >= 0);
            let want = if *key { 0x0200_0000 } else { 0x0101_0000 };
            assert_eq!(flags, want, "sample {} flags", consumed + i);
            at += size;
            dts += i64::from(duration);
            first_pts = first_pts.min(*pts);
        }
        assert_eq!(at, mdat.len(), "mdat holds exactly the samples");
        assert_eq!(dts - frag.base_dts, frag.duration);
        assert_eq!(first_pts, frag.first_pts);
        assert_eq!(frag.starts_with_key, s.frames[consumed].1);
        consumed += count;
    }
    assert_eq!(consumed, s.frames.len());
    // Decode time is continuous from fragment to fragment.
    for w in s.fragments.windows(2) {
        assert_eq!(w[1].base_dts, w[0].base_dts + w[0].duration);
    }
}

fn expected_infos(s: &Session) -> Vec<FragmentInfo> {
    let mut offset = s.init_len as u64;
    s.fragments
        .iter()
        .map(|f| {
            let info = f.info(offset);
            offset += f.bytes.len() as u64;
            info
        })
        .collect()
}

#[test]
fn scan_round_trips_every_fragment_field() {
    for (seed, gop) in [
        (2, GOP),
        (
            3,
            Gop {
                bframes: 0,
                pyramid: false,
                ..GOP
            },
        ),
        (4, Gop { length: 1, ..GOP }),
    ] {
        let s = session(seed, gop);
        assert!(
            gop.length == 1 || s.fragments.iter().any(|f| !f.starts_with_key),
            "the session should include fragments cut mid-GOP"
        );
        let idx = scan(&mut Cursor::new(&s.file)).expect("scan");
        assert_eq!(idx.init_len, s.init_len as u64);
        assert_eq!(idx.fragments, expected_infos(&s));
        assert_eq!(idx.complete_len, s.file.len() as u64);
        assert_eq!(idx.file_len, s.file.len() as u64);
        assert_eq!(idx.tail, None);
        assert!(idx.is_clean());
        assert_eq!(
            idx.duration(),
            s.fragments.iter().map(|f| f.duration).sum::<i64>()
        );
        let params = idx.params.expect("params");
        assert_eq!(
            (
                params.codec,
                params.width,
                params.height,
                &params.decoder_config,
                params.pixel_aspect
            ),
            (
                s.params.codec,
                s.params.width,
                s.params.height,
                &s.params.decoder_config,
                s.params.pixel_aspect
            )
        );
        assert_eq!(params.rfc6381, "avc1.64000d");
    }
}

#[test]
fn scan_of_a_file_cut_anywhere_reports_the_last_complete_fragment() {
    let s = session(
        5,
        Gop {
            frames: 20,
            length: 4,
            ..GOP
        },
    );
    let infos = expected_infos(&s);
    for cut in 0..=s.file.len() {
        let bytes = &s.file[..cut];
        let result = scan(&mut Cursor::new(bytes));
        if cut < s.init_len {
            let err = result.expect_err("a truncated init segment is unusable");
            assert!(
                matches!(err, Mp4Error::TruncatedInit { .. }),
                "cut {cut}: {err}"
            );
            continue;
        }
        let idx = result.unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let whole: Vec<FragmentInfo> = infos
            .iter()
            .filter(|f| f.offset + f.len <= cut as u64)
            .cloned()
            .collect();
        let boundary = whole.last().map_or(s.init_len as u64, |f| f.offset + f.len);
        assert_eq!(idx.fragments, whole, "cut {cut}");
        assert_eq!(idx.complete_len, boundary, "cut {cut}");
        assert_eq!(idx.file_len, cut as u64);
        match &idx.tail {
            None => assert_eq!(boundary, cut as u64, "cut {cut}"),
            Some(TailProblem::Truncated { offset, .. }) => {
                assert_eq!(*offset, boundary, "cut {cut}");
                assert!(boundary < cut as u64);
            }
            Some(other) => panic!("cut {cut}: {other}"),
        }
    }
}

#[test]
fn scan_stops_at_zero_fill_and_garbage_without_panicking() {
    let s = session(6, GOP);
    let infos = expected_infos(&s);
    let end = s.file.len() as u64;

    // A crash after the file grew but before the data landed leaves zeros.
    let mut zeros = s.file.clone();
    zeros.extend_from_slice(&[0; 4096]);
    let idx = scan(&mut Cursor::new(&zeros)).expect("scan");
    assert_eq!(idx.fragments, infos);
    assert_eq!(idx.complete_len, end);
    assert!(matches!(idx.tail, Some(TailProblem::Corrupt { offset, .. }) if offset == end));

    let mut junk = s.file.clone();
    junk.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8,
    ]);
    let idx = scan(&mut Cursor::new(&junk)).expect("scan");
    assert_eq!(idx.complete_len, end);
    assert!(matches!(idx.tail, Some(TailProblem::Corrupt { offset, .. }) if offset == end));

    // Other boxes between fragments are skipped; an mdat on its own is not a fragment.
    let mut with_free = s.file[..s.init_len].to_vec();
    with_free.extend_from_slice(&[0, 0, 0, 8, b'f', b'r', b'e', b'e']);
    with_free.extend_from_slice(&s.file[s.init_len..]);
    let idx = scan(&mut Cursor::new(&with_free)).expect("scan");
    assert_eq!(idx.fragments.len(), infos.len());
    assert_eq!(idx.fragments[0].offset, s.init_len as u64 + 8);

    // Overwrite every byte of the first fragment's moof, one at a time, with values that
    // break sizes and counts: scan may stop early but must not panic, and whatever it reports
    // as complete must still lie within the file.
    let check = |damaged: &[u8]| {
        if let Ok(idx) = scan(&mut Cursor::new(damaged)) {
            assert!(idx.complete_len <= idx.file_len);
            for f in &idx.fragments {
                assert!(f.offset + f.len <= idx.complete_len);
            }
        }
    };
    let first = &infos[0];
    let mut rng = Lcg::new(8);
    for at in first.offset..first.offset + u64::from(first.moof_len) + 16 {
        for value in [0x00, 0xff, 0x7f, rng.next() as u8] {
            let mut damaged = s.file.clone();
            damaged[at as usize] = value;
            check(&damaged);
        }
    }
    // Whole fields set to extremes: times and sizes near the limits of their types.
    for at in first.offset..first.offset + u64::from(first.moof_len) - 8 {
        for value in [u64::MAX, i64::MAX as u64, 0x7fff_ffff, 0x8000_0000] {
            let mut damaged = s.file.clone();
            damaged[at as usize..at as usize + 8].copy_from_slice(&value.to_be_bytes());
            check(&damaged);
        }
    }
}

#[test]
fn scan_rejects_files_without_a_usable_init_segment() {
    let s = session(9, GOP);
    let err = scan(&mut Cursor::new(&s.file[s.init_len..])).expect_err("no ftyp");
    assert!(
        matches!(err, Mp4Error::NotMp4 { found } if found.0 == *b"moof"),
        "{err}"
    );
    assert!(matches!(
        scan(&mut Cursor::new(Vec::new())),
        Err(Mp4Error::TruncatedInit { .. })
    ));
    // ftyp straight followed by fragments: no moov.
    let ftyp_len = be32(&s.file, 0) as usize;
    let mut no_moov = s.file[..ftyp_len].to_vec();
    no_moov.extend_from_slice(&s.file[s.init_len..]);
    let err = scan(&mut Cursor::new(&no_moov)).expect_err("no moov");
    assert!(
        matches!(err, Mp4Error::MissingBox { path: "moov" }),
        "{err}"
    );
}

#[test]
fn rewrite_moof_changes_only_sequence_and_decode_time() {
    let s = session(10, GOP);
    for frag in &s.fragments {
        let moof_len = frag.moof_len() as usize;
        let original = frag.bytes[..moof_len].to_vec();
        let mut patched = original.clone();
        let base = frag.base_dts + 123_456_789;
        rewrite_moof(&mut patched, 0xdead_beef, base).expect("rewrite");

        let (_, mfhd) = tree(&original)
            .into_iter()
            .find(|(p, _)| p == "moof/mfhd")
            .expect("mfhd");
        let (_, tfdt) = tree(&original)
            .into_iter()
            .find(|(p, _)| p == "moof/traf/tfdt")
            .expect("tfdt");
        let seq_field = mfhd.body + 4..mfhd.body + 8;
        let dts_field = tfdt.body + 4..tfdt.body + 12;
        for (i, (a, b)) in original.iter().zip(&patched).enumerate() {
            if !seq_field.contains(&i) && !dts_field.contains(&i) {
                assert_eq!(a, b, "byte {i} changed");
            }
        }
        assert_eq!(&patched[seq_field], &0xdead_beefu32.to_be_bytes());
        assert_eq!(&patched[dts_field], &(base as u64).to_be_bytes());

        // The scanner sees the new values and presentation times moved with them.
        let mut file = s.file[..s.init_len].to_vec();
        file.extend_from_slice(&patched);
        file.extend_from_slice(&frag.bytes[moof_len..]);
        let idx = scan(&mut Cursor::new(&file)).expect("scan");
        let info = idx.fragments[0].clone();
        assert_eq!(info.sequence, 0xdead_beef);
        assert_eq!(info.base_dts, base);
        assert_eq!(info.first_pts, frag.first_pts + 123_456_789);
        assert_eq!((info.duration, info.frames), (frag.duration, frag.frames));

        // Fragment::rebase keeps the struct in step with its bytes.
        let mut moved = frag.clone();
        moved.rebase(0xdead_beef, base).expect("rebase");
        assert_eq!(&moved.bytes[..moof_len], &patched[..]);
        assert_eq!(moved.info(s.init_len as u64), info);
    }
}

#[test]
fn rewrite_moof_refuses_what_it_cannot_patch_and_leaves_it_untouched() {
    let s = session(11, GOP);
    let frag = &s.fragments[0];
    let moof_len = frag.moof_len() as usize;
    let moof = frag.bytes[..moof_len].to_vec();

    let mut m = moof.clone();
    assert!(matches!(
        rewrite_moof(&mut m, 1, -1),
        Err(Mp4Error::NegativeDecodeTime(-1))
    ));
    assert_eq!(m, moof);

    // moof + mdat is not "one moof".
    let mut whole = frag.bytes.clone();
    assert!(matches!(
        rewrite_moof(&mut whole, 1, 0),
        Err(Mp4Error::Unsupported(_))
    ));
    assert_eq!(whole, frag.bytes);

    let mut short = moof[..moof_len - 1].to_vec();
    assert!(rewrite_moof(&mut short, 1, 0).is_err());

    // A 32-bit tfdt cannot take a 64-bit value in place.
    let (_, tfdt) = tree(&moof)
        .into_iter()
        .find(|(p, _)| p == "moof/traf/tfdt")
        .expect("tfdt");
    let mut v0 = moof.clone();
    v0[tfdt.body] = 0;
    let err = rewrite_moof(&mut v0.clone(), 1, 0).expect_err("version 0");
    assert!(err.to_string().contains("version 1"), "{err}");

    let mut not_moof = moof.clone();
    not_moof[4..8].copy_from_slice(b"moov");
    assert!(matches!(
        rewrite_moof(&mut not_moof, 1, 0),
        Err(Mp4Error::Unsupported(_))
    ));
}

#[test]
fn builder_reports_what_it_holds() {
    let params = h264_params();
    let mut b = FragmentBuilder::default();
    assert!(b.is_empty());
    assert_eq!(b.duration_ticks(), 0);
    assert!(!b.starts_with_key());
    let empty = b.finish(1, None);
    assert!(empty.bytes.is_empty() && empty.frames == 0);

    b.push(&frame(&params, 1_000, true, 10, 1));
    assert_eq!(b.duration_ticks(), 3_600, "one frame at the default 25 fps");
    b.push(&frame(&params, 1_000 + 3_000, false, 10, 2));
    b.push(&frame(&params, 1_000 + 6_000, false, 10, 3));
    assert_eq!((b.len(), b.pending_bytes()), (3, 42));
    assert!(b.starts_with_key());
    assert_eq!(
        b.duration_ticks(),
        6_000 + 3_000,
        "estimated from the frames' spacing"
    );
    let f = b.finish(7, Some(1_000 + 9_500));
    assert_eq!(
        (f.sequence, f.frames, f.base_dts, f.first_pts),
        (7, 3, 1_000, 1_000)
    );
    assert_eq!(f.duration, 9_500, "last sample ends at next_pts");

    b.push(&frame(&params, 10_500, false, 10, 4));
    assert!(!b.starts_with_key());
    assert_eq!(
        b.duration_ticks(),
        3_500,
        "the last emitted sample's duration"
    );
    let f = b.finish(8, None);
    assert_eq!(f.base_dts, 10_500);
    assert!(!f.starts_with_key);
    let idx_frag = f.info(0);
    assert!(!idx_frag.starts_with_key);
}
