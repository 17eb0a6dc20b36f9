//! Reading files back: the index of an fMP4 file as found on disk (tolerant of the partial
//! fragment a crash leaves at the end) and in-place patching of a moof's sequence number and
//! decode time.

use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use xueliang_core::media::{VideoCodec, VideoParams};

use super::boxes::{BoxRange, Reader, children, find, require};
use super::codec::rfc6381;
use super::{FourCc, Mp4Error, SAMPLE_IS_NON_SYNC};

/// Largest moov or moof we read into memory. Ours are a few kilobytes (16 bytes per frame in a
/// moof); a bigger size field is damage, and trusting it could allocate gigabytes.
const MAX_META_BOX: u64 = 16 << 20;

/// Most samples one fragment may claim: what a moof of `MAX_META_BOX` bytes can describe at
/// the 16 bytes per sample this crate writes. Hours of video at camera frame rates.
const MAX_SAMPLES: u64 = MAX_META_BOX / 16;

/// Index of an fMP4 file as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIndex {
    /// Bytes of the init segment (ftyp + moov and anything before the first fragment).
    pub init_len: u64,
    /// The track's parameters as the init segment states them; `None` if its sample entry is
    /// not H.264 / H.265. `rfc6381` is derived from the configuration record, so compare
    /// `decoder_config` rather than the whole value against what the ingest reports.
    pub params: Option<VideoParams>,
    /// Every complete moof+mdat pair, in file order.
    pub fragments: Vec<FragmentInfo>,
    /// Offset just past the last complete moof+mdat pair (or `init_len` if there is none).
    /// Truncating the file here drops exactly the damaged tail (and any whole non-fragment
    /// boxes after the last fragment, which this crate never writes).
    pub complete_len: u64,
    pub file_len: u64,
    /// Why scanning stopped before `file_len`, if it did.
    pub tail: Option<TailProblem>,
}

impl FileIndex {
    /// No damaged or partial bytes after the last fragment.
    pub fn is_clean(&self) -> bool {
        self.tail.is_none()
    }

    /// Sum of the fragments' durations, 90 kHz ticks.
    pub fn duration(&self) -> i64 {
        self.fragments.iter().map(|f| f.duration).sum()
    }
}

/// One complete moof+mdat pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragmentInfo {
    /// File offset of the moof.
    pub offset: u64,
    pub moof_len: u32,
    /// moof + mdat (and any boxes between them).
    pub len: u64,
    pub sequence: u32,
    /// `tfdt`: decode time of the first sample.
    pub base_dts: i64,
    /// Smallest presentation time of any sample.
    pub first_pts: i64,
    /// Sum of sample durations.
    pub duration: i64,
    pub frames: u32,
    pub starts_with_key: bool,
}

/// Why [`scan`] stopped before the end of the file. Everything before
/// [`FileIndex::complete_len`] is intact either way.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TailProblem {
    /// The file ends inside a box: a crash or a write still in progress.
    #[error("file ends at byte {file_len} inside `{box_type}` starting at byte {offset}")]
    Truncated {
        offset: u64,
        box_type: FourCc,
        file_len: u64,
    },
    /// The bytes at `offset` are not a well-formed fragment (a zero-filled tail after a crash,
    /// or other damage).
    #[error("damaged data at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
}

/// Indexes a fragmented MP4 file. Only an unusable init segment (not MP4, truncated or
/// malformed ftyp/moov, no fragmentable video track) or an I/O error is an `Err`; a damaged or
/// partial tail is reported in [`FileIndex::tail`].
pub fn scan<R: Read + Seek>(r: &mut R) -> Result<FileIndex, Mp4Error> {
    let file_len = r.seek(SeekFrom::End(0))?;

    // Init segment: ftyp first, then anything up to and including moov.
    let mut pos = 0;
    let moov = loop {
        let header = match read_header(r, pos, file_len)? {
            Header::Box(h) => h,
            Header::Truncated(box_type) | Header::Unsized(box_type) => {
                return Err(Mp4Error::TruncatedInit { box_type, file_len });
            }
            Header::Invalid(reason) => {
                return Err(Mp4Error::Malformed {
                    box_type: FourCc(*b"file"),
                    offset: pos,
                    reason,
                });
            }
        };
        if pos == 0 && header.box_type.0 != *b"ftyp" {
            return Err(Mp4Error::NotMp4 {
                found: header.box_type,
            });
        }
        if header.end > file_len {
            return Err(Mp4Error::TruncatedInit {
                box_type: header.box_type,
                file_len,
            });
        }
        match &header.box_type.0 {
            b"moov" => break header,
            b"moof" | b"mdat" => return Err(Mp4Error::MissingBox { path: "moov" }),
            _ => pos = header.end,
        }
    };
    if moov.end - moov.start > MAX_META_BOX {
        return Err(Mp4Error::Unsupported(format!(
            "moov of {} bytes; at most {MAX_META_BOX} are read",
            moov.end - moov.start
        )));
    }
    let moov_bytes = read_at(r, moov.start, moov.end - moov.start)?;
    let track = parse_moov(&moov_bytes, moov.header_len as usize, moov.start)?;
    let init_len = moov.end;

    let mut index = FileIndex {
        init_len,
        params: track.params.clone(),
        fragments: Vec::new(),
        complete_len: init_len,
        file_len,
        tail: None,
    };
    let mut pos = init_len;
    while pos < file_len {
        match next_fragment(r, pos, file_len, &track)? {
            Step::Fragment(info) => {
                pos = info.offset + info.len;
                index.complete_len = pos;
                index.fragments.push(info);
            }
            Step::Skip(end) => pos = end,
            Step::Stop(problem) => {
                index.tail = Some(problem);
                break;
            }
        }
    }
    Ok(index)
}

/// What the moov says about the (single) track that the fragments need.
struct Track {
    id: u32,
    params: Option<VideoParams>,
    default_duration: u32,
    default_size: u32,
    default_flags: u32,
}

/// `buf` is the whole moov box, `header_len` its header size, `offset` its file offset.
fn parse_moov(buf: &[u8], header_len: usize, offset: u64) -> Result<Track, Mp4Error> {
    let moov = children(buf, header_len..buf.len(), FourCc(*b"moov"), offset)?;
    let mvex = require(&moov, b"mvex", "moov/mvex")
        .map_err(|_| Mp4Error::Unsupported("not a fragmented file: moov has no mvex".to_owned()))?;
    let trak = require(&moov, b"trak", "moov/trak")?;

    let trak_children = children(buf, trak.body_range(), FourCc(*b"trak"), offset)?;
    let tkhd = require(&trak_children, b"tkhd", "moov/trak/tkhd")?;
    let mut rd = Reader::new(
        &buf[tkhd.body_range()],
        FourCc(*b"tkhd"),
        offset + tkhd.start as u64,
    );
    let (version, _) = rd.version_flags()?;
    rd.skip(if version == 1 { 16 } else { 8 })?;
    let id = rd.u32()?;

    let mdia = require(&trak_children, b"mdia", "moov/trak/mdia")?;
    let mdia = children(buf, mdia.body_range(), FourCc(*b"mdia"), offset)?;
    let hdlr = require(&mdia, b"hdlr", "moov/trak/mdia/hdlr")?;
    let handler = buf.get(hdlr.body + 8..hdlr.body + 12);
    if handler != Some(b"vide".as_slice()) {
        return Err(Mp4Error::Unsupported(format!(
            "first track is not video (handler {:?})",
            handler.map(|h| String::from_utf8_lossy(h).into_owned())
        )));
    }
    let mdhd = require(&mdia, b"mdhd", "moov/trak/mdia/mdhd")?;
    let mut rd = Reader::new(
        &buf[mdhd.body_range()],
        FourCc(*b"mdhd"),
        offset + mdhd.start as u64,
    );
    let (version, _) = rd.version_flags()?;
    rd.skip(if version == 1 { 16 } else { 8 })?;
    let timescale = rd.u32()?;
    if timescale != super::TIMESCALE {
        // Fragment times are reported as 90 kHz ticks; another timescale would make them lie.
        return Err(Mp4Error::Unsupported(format!(
            "track timescale {timescale}, expected {}",
            super::TIMESCALE
        )));
    }
    let params = sample_entry_params(buf, &mdia, offset)?;

    let mvex = children(buf, mvex.body_range(), FourCc(*b"mvex"), offset)?;
    let mut track = Track {
        id,
        params,
        default_duration: 0,
        default_size: 0,
        default_flags: 0,
    };
    for trex in mvex.iter().filter(|b| b.box_type.0 == *b"trex") {
        let mut rd = Reader::new(
            &buf[trex.body_range()],
            FourCc(*b"trex"),
            offset + trex.start as u64,
        );
        rd.version_flags()?;
        if rd.u32()? == id {
            rd.u32()?; // default_sample_description_index
            track.default_duration = rd.u32()?;
            track.default_size = rd.u32()?;
            track.default_flags = rd.u32()?;
        }
    }
    Ok(track)
}

/// `VideoParams` from the first stsd entry, or `None` for a codec this crate does not write.
fn sample_entry_params(
    buf: &[u8],
    mdia: &[BoxRange],
    offset: u64,
) -> Result<Option<VideoParams>, Mp4Error> {
    let minf = require(mdia, b"minf", "moov/trak/mdia/minf")?;
    let minf = children(buf, minf.body_range(), FourCc(*b"minf"), offset)?;
    let stbl = require(&minf, b"stbl", "moov/trak/mdia/minf/stbl")?;
    let stbl = children(buf, stbl.body_range(), FourCc(*b"stbl"), offset)?;
    let stsd = require(&stbl, b"stsd", "moov/trak/mdia/minf/stbl/stsd")?;
    // version/flags and entry_count precede the entries
    let entries = children(buf, stsd.body + 8..stsd.end, FourCc(*b"stsd"), offset)?;
    let Some(entry) = entries.first() else {
        return Err(Mp4Error::MissingBox {
            path: "moov/trak/mdia/minf/stbl/stsd entry",
        });
    };
    let (codec, config_type) = match &entry.box_type.0 {
        b"avc1" | b"avc3" => (VideoCodec::H264, b"avcC"),
        b"hvc1" | b"hev1" => (VideoCodec::H265, b"hvcC"),
        _ => return Ok(None),
    };
    let mut rd = Reader::new(
        &buf[entry.body_range()],
        entry.box_type,
        offset + entry.start as u64,
    );
    rd.skip(24)?;
    let width = u32::from(rd.u16()?);
    let height = u32::from(rd.u16()?);
    rd.skip(50)?;
    let inner = children(
        buf,
        entry.body + rd.position()..entry.end,
        entry.box_type,
        offset,
    )?;
    let config = require(&inner, config_type, "stsd entry codec configuration")?;
    let decoder_config = Bytes::copy_from_slice(&buf[config.body_range()]);
    let pixel_aspect = match find(&inner, b"pasp") {
        Some(pasp) => {
            let mut rd = Reader::new(
                &buf[pasp.body_range()],
                FourCc(*b"pasp"),
                offset + pasp.start as u64,
            );
            Some((rd.u32()?, rd.u32()?))
        }
        None => None,
    };
    let entry_name = String::from_utf8_lossy(&entry.box_type.0).into_owned();
    let rfc6381 = rfc6381(codec, &entry_name, &decoder_config).unwrap_or(entry_name);
    Ok(Some(VideoParams {
        codec,
        width,
        height,
        decoder_config,
        rfc6381,
        pixel_aspect,
    }))
}

/// A top-level box header.
#[derive(Copy, Clone, Debug)]
struct BoxHeader {
    box_type: FourCc,
    start: u64,
    /// Header length (8, or 16 with largesize).
    header_len: u64,
    end: u64,
}

enum Header {
    Box(BoxHeader),
    /// The file ends inside the header.
    Truncated(FourCc),
    /// Size 0, "extends to end of file": only legal for a final box still being written,
    /// which for us means a partial write.
    Unsized(FourCc),
    Invalid(String),
}

fn read_header<R: Read + Seek>(r: &mut R, pos: u64, file_len: u64) -> Result<Header, Mp4Error> {
    let available = file_len - pos;
    let mut head = [0u8; 16];
    let n = available.min(16) as usize;
    r.seek(SeekFrom::Start(pos))?;
    r.read_exact(&mut head[..n])?;
    if n < 8 {
        let mut box_type = [b'?'; 4];
        if n > 4 {
            box_type[..n - 4].copy_from_slice(&head[4..n]);
        }
        return Ok(Header::Truncated(FourCc(box_type)));
    }
    let box_type = FourCc([head[4], head[5], head[6], head[7]]);
    let (header_len, size) = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
        0 => return Ok(Header::Unsized(box_type)),
        1 if n < 16 => return Ok(Header::Truncated(box_type)),
        1 => (
            16,
            u64::from_be_bytes(head[8..16].try_into().expect("8 bytes")),
        ),
        n => (8, u64::from(n)),
    };
    if size < header_len {
        return Ok(Header::Invalid(format!(
            "`{box_type}` box claims {size} bytes, less than its header"
        )));
    }
    Ok(Header::Box(BoxHeader {
        box_type,
        start: pos,
        header_len,
        end: pos.saturating_add(size),
    }))
}

/// Four printable ASCII characters, as every registered box type is; zero fill is not.
fn is_box_type(t: FourCc) -> bool {
    t.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

fn read_at<R: Read + Seek>(r: &mut R, pos: u64, len: u64) -> Result<Vec<u8>, Mp4Error> {
    let mut buf = vec![0; len as usize];
    r.seek(SeekFrom::Start(pos))?;
    r.read_exact(&mut buf)?;
    Ok(buf)
}

enum Step {
    Fragment(FragmentInfo),
    /// A complete box that is not a fragment (free, sidx, mfra...): continue after it.
    Skip(u64),
    Stop(TailProblem),
}

/// Reads the fragment (or other box) at `pos`. Anything wrong with it is a `Stop`, not an
/// error: a crash may leave any bytes at the end of a file.
fn next_fragment<R: Read + Seek>(
    r: &mut R,
    pos: u64,
    file_len: u64,
    track: &Track,
) -> Result<Step, Mp4Error> {
    let corrupt = |reason: String| {
        Ok(Step::Stop(TailProblem::Corrupt {
            offset: pos,
            reason,
        }))
    };
    let truncated = |box_type| {
        Ok(Step::Stop(TailProblem::Truncated {
            offset: pos,
            box_type,
            file_len,
        }))
    };
    let not_a_box = |box_type| {
        corrupt(format!(
            "`{box_type}` is not a box type (zero fill or garbage)"
        ))
    };
    let moof = match read_header(r, pos, file_len)? {
        Header::Box(h) if is_box_type(h.box_type) => h,
        Header::Box(h) => return not_a_box(h.box_type),
        Header::Unsized(box_type) if !is_box_type(box_type) => return not_a_box(box_type),
        Header::Truncated(box_type) | Header::Unsized(box_type) => return truncated(box_type),
        Header::Invalid(reason) => return corrupt(reason),
    };
    if moof.end > file_len {
        return truncated(moof.box_type);
    }
    match &moof.box_type.0 {
        b"moof" => {}
        b"mdat" => return corrupt("mdat without a moof before it".to_owned()),
        _ => return Ok(Step::Skip(moof.end)),
    }
    let moof_len = moof.end - moof.start;
    if moof_len > MAX_META_BOX {
        return corrupt(format!("moof claims {moof_len} bytes"));
    }
    let moof_bytes = read_at(r, pos, moof_len)?;
    let summary = match summarize_moof(&moof_bytes, moof.header_len as usize, pos, track) {
        Ok(s) => s,
        Err(e) => return corrupt(e.to_string()),
    };

    // The sample data: the mdat right after the moof.
    let mdat = match read_header(r, moof.end, file_len)? {
        Header::Box(h) => h,
        Header::Unsized(box_type) if !is_box_type(box_type) => return not_a_box(box_type),
        Header::Truncated(box_type) | Header::Unsized(box_type) => return truncated(box_type),
        Header::Invalid(reason) => return corrupt(reason),
    };
    if mdat.box_type.0 != *b"mdat" {
        return corrupt(format!("moof followed by `{}`, not mdat", mdat.box_type));
    }
    if mdat.end > file_len {
        return truncated(mdat.box_type);
    }
    let payload = (mdat.start + mdat.header_len - pos)..(mdat.end - pos);
    if summary.frames > 0 && (summary.data.start < payload.start || summary.data.end > payload.end)
    {
        return corrupt(format!(
            "samples occupy bytes {:?} of the fragment, its mdat payload is {payload:?}",
            summary.data
        ));
    }
    Ok(Step::Fragment(FragmentInfo {
        offset: pos,
        moof_len: moof_len as u32,
        len: mdat.end - pos,
        sequence: summary.sequence,
        base_dts: summary.base_dts,
        first_pts: summary.first_pts,
        duration: summary.duration,
        frames: summary.frames,
        starts_with_key: summary.starts_with_key,
    }))
}

struct MoofSummary {
    sequence: u32,
    base_dts: i64,
    first_pts: i64,
    duration: i64,
    frames: u32,
    starts_with_key: bool,
    /// Byte range of the sample data, relative to the moof start.
    data: std::ops::Range<u64>,
}

fn summarize_moof(
    buf: &[u8],
    header_len: usize,
    offset: u64,
    track: &Track,
) -> Result<MoofSummary, Mp4Error> {
    let moof = children(buf, header_len..buf.len(), FourCc(*b"moof"), offset)?;
    let mfhd = require(&moof, b"mfhd", "moof/mfhd")?;
    let mut rd = Reader::new(
        &buf[mfhd.body_range()],
        FourCc(*b"mfhd"),
        offset + mfhd.start as u64,
    );
    rd.version_flags()?;
    let sequence = rd.u32()?;

    // Our files have one track; take its traf and ignore any other.
    let mut traf = None;
    for t in moof.iter().filter(|b| b.box_type.0 == *b"traf") {
        let kids = children(buf, t.body_range(), FourCc(*b"traf"), offset)?;
        let tfhd = require(&kids, b"tfhd", "moof/traf/tfhd")?;
        if buf.get(tfhd.body + 4..tfhd.body + 8) == Some(&track.id.to_be_bytes()[..]) {
            traf = Some(kids);
            break;
        }
    }
    let traf = traf.ok_or(Mp4Error::MissingBox {
        path: "moof/traf for the video track",
    })?;

    let tfhd = require(&traf, b"tfhd", "moof/traf/tfhd")?;
    let mut rd = Reader::new(
        &buf[tfhd.body_range()],
        FourCc(*b"tfhd"),
        offset + tfhd.start as u64,
    );
    let (_, flags) = rd.version_flags()?;
    rd.u32()?; // track_ID
    let mut base: u64 = 0; // relative to the moof start
    if flags & 0x01 != 0 {
        let absolute = rd.u64()?;
        base = absolute.checked_sub(offset).ok_or_else(|| {
            rd.malformed(format!("base_data_offset {absolute} lies before the moof"))
        })?;
    }
    // Otherwise the base is the moof start: always with default-base-is-moof, and for the
    // first traf without it too, which is the only traf we read.
    if flags & 0x02 != 0 {
        rd.u32()?; // sample_description_index
    }
    let default_duration = if flags & 0x08 != 0 {
        rd.u32()?
    } else {
        track.default_duration
    };
    let default_size = if flags & 0x10 != 0 {
        rd.u32()?
    } else {
        track.default_size
    };
    let default_flags = if flags & 0x20 != 0 {
        rd.u32()?
    } else {
        track.default_flags
    };

    let tfdt = require(&traf, b"tfdt", "moof/traf/tfdt")?;
    let mut rd = Reader::new(
        &buf[tfdt.body_range()],
        FourCc(*b"tfdt"),
        offset + tfdt.start as u64,
    );
    let (version, _) = rd.version_flags()?;
    let base_dts = if version == 1 {
        rd.u64()?
    } else {
        u64::from(rd.u32()?)
    };
    let base_dts = i64::try_from(base_dts)
        .map_err(|_| rd.malformed(format!("baseMediaDecodeTime {base_dts} out of range")))?;

    let mut dts = base_dts;
    let mut first_pts: Option<i64> = None;
    let mut frames: u32 = 0;
    let mut starts_with_key = false;
    let mut data_pos = base;
    let mut data: Option<std::ops::Range<u64>> = None;
    for trun in traf.iter().filter(|b| b.box_type.0 == *b"trun") {
        let mut rd = Reader::new(
            &buf[trun.body_range()],
            FourCc(*b"trun"),
            offset + trun.start as u64,
        );
        let (version, flags) = rd.version_flags()?;
        let count = rd.u32()?;
        if flags & 0x01 != 0 {
            let off = rd.u32()? as i32;
            data_pos = base
                .checked_add_signed(i64::from(off))
                .ok_or_else(|| rd.malformed(format!("data_offset {off} lies before the moof")))?;
        }
        let first_flags = if flags & 0x04 != 0 {
            Some(rd.u32()?)
        } else {
            None
        };
        let per_sample = [0x100, 0x200, 0x400, 0x800]
            .iter()
            .filter(|&&f| flags & f != 0)
            .count();
        // A run without per-sample fields takes no room, so bound it separately: it would
        // otherwise make a damaged count cost billions of iterations.
        if (count as usize).saturating_mul(per_sample * 4) > buf.len()
            || u64::from(frames) + u64::from(count) > MAX_SAMPLES
        {
            return Err(rd.malformed(format!("{count} samples do not fit the box")));
        }
        let run_start = data_pos;
        for i in 0..count {
            let duration = if flags & 0x100 != 0 {
                rd.u32()?
            } else {
                default_duration
            };
            let size = if flags & 0x200 != 0 {
                rd.u32()?
            } else {
                default_size
            };
            let sample_flags = if flags & 0x400 != 0 {
                rd.u32()?
            } else {
                default_flags
            };
            let sample_flags = match (i, first_flags) {
                (0, Some(f)) => f,
                _ => sample_flags,
            };
            let cto = if flags & 0x800 != 0 {
                let raw = rd.u32()?;
                if version == 0 {
                    i64::from(raw)
                } else {
                    i64::from(raw as i32)
                }
            } else {
                0
            };
            if frames == 0 {
                starts_with_key = sample_flags & SAMPLE_IS_NON_SYNC == 0;
            }
            let overflow = || rd.malformed("sample times overflow");
            let pts = dts.checked_add(cto).ok_or_else(overflow)?;
            first_pts = Some(first_pts.map_or(pts, |p| p.min(pts)));
            dts = dts.checked_add(i64::from(duration)).ok_or_else(overflow)?;
            data_pos = data_pos
                .checked_add(u64::from(size))
                .ok_or_else(|| rd.malformed("sample sizes overflow"))?;
            frames += 1; // bounded by MAX_SAMPLES above
        }
        if count > 0 {
            data = Some(match data {
                Some(d) => d.start.min(run_start)..d.end.max(data_pos),
                None => run_start..data_pos,
            });
        }
    }
    Ok(MoofSummary {
        sequence,
        base_dts,
        first_pts: first_pts.unwrap_or(base_dts),
        duration: dts - base_dts,
        frames,
        starts_with_key,
        data: data.unwrap_or(base..base),
    })
}

/// Rewrites `sequence_number` (mfhd) and `baseMediaDecodeTime` (tfdt) inside one moof, in
/// place, leaving every other byte as it was.
///
/// `moof` must be exactly one moof box with a single traf whose tfdt is version 1 (64-bit), as
/// this crate writes them; that keeps the box size, so the fragment's offsets stay valid. Use it
/// to renumber fragments when moving them into another file, e.g. when exporting a time range.
pub fn rewrite_moof(moof: &mut [u8], sequence: u32, base_dts: i64) -> Result<(), Mp4Error> {
    let base = u64::try_from(base_dts).map_err(|_| Mp4Error::NegativeDecodeTime(base_dts))?;
    let top = children(moof, 0..moof.len(), FourCc(*b"file"), 0)?;
    let [root] = top.as_slice() else {
        return Err(Mp4Error::Unsupported(format!(
            "expected exactly one moof box, found {} boxes",
            top.len()
        )));
    };
    if root.box_type.0 != *b"moof" {
        return Err(Mp4Error::Unsupported(format!(
            "expected a moof box, found `{}`",
            root.box_type
        )));
    }
    let kids = children(moof, root.body_range(), FourCc(*b"moof"), 0)?;
    let mfhd = require(&kids, b"mfhd", "moof/mfhd")?;
    let trafs: Vec<BoxRange> = kids
        .iter()
        .filter(|b| b.box_type.0 == *b"traf")
        .copied()
        .collect();
    let [traf] = trafs.as_slice() else {
        return Err(Mp4Error::Unsupported(format!(
            "moof with {} traf boxes; only single-track fragments can be rebased",
            trafs.len()
        )));
    };
    let tfdt = require(
        &children(moof, traf.body_range(), FourCc(*b"traf"), 0)?,
        b"tfdt",
        "moof/traf/tfdt",
    )?;
    if tfdt.end - tfdt.body != 12 || moof[tfdt.body] != 1 {
        return Err(Mp4Error::Unsupported(
            "tfdt is not version 1 (64-bit), so it cannot be patched in place".to_owned(),
        ));
    }
    if mfhd.end - mfhd.body != 8 {
        return Err(Mp4Error::Malformed {
            box_type: FourCc(*b"mfhd"),
            offset: mfhd.start as u64,
            reason: format!("body is {} bytes, expected 8", mfhd.end - mfhd.body),
        });
    }
    // Both boxes were checked before either is written, so a failure leaves the moof as it was.
    moof[mfhd.body + 4..mfhd.body + 8].copy_from_slice(&sequence.to_be_bytes());
    moof[tfdt.body + 4..tfdt.body + 12].copy_from_slice(&base.to_be_bytes());
    Ok(())
}
