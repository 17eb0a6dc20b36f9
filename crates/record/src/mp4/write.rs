//! Writing: the init segment (ftyp + moov) for a stream's parameters, and the builder that
//! turns decode-order frames into moof+mdat fragments.

use std::fmt;

use bytes::Bytes;
use xueliang_core::media::{VideoFrame, VideoParams};

use super::boxes::{write_box, write_full_box};
use super::codec::{check_params, entry_types};
use super::dts::{DEFAULT_DURATION, DtsDeriver};
use super::scan::FragmentInfo;
use super::{
    KEY_SAMPLE_FLAGS, Mp4Error, NON_KEY_SAMPLE_FLAGS, TFHD_DEFAULT_BASE_IS_MOOF, TIMESCALE,
    TRUN_FLAGS, rewrite_moof,
};

/// The only track in every file.
pub(crate) const TRACK_ID: u32 = 1;

/// 16.16 fixed-point identity matrix for mvhd / tkhd.
const UNITY_MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// `ftyp` + `moov` for a fragmented file holding one video track with these parameters.
///
/// Every sample table in `moov` is empty: the samples live in the fragments that follow. A change
/// of parameters (resolution, profile, parameter sets) needs a new init segment, so a new file.
pub fn init_segment(params: &VideoParams) -> Result<Vec<u8>, Mp4Error> {
    check_params(params)?;
    let (entry_type, config_type) = entry_types(params.codec);
    let mut out = Vec::with_capacity(700 + params.decoder_config.len());

    write_box(&mut out, b"ftyp", |b| {
        b.extend_from_slice(b"isom");
        b.extend_from_slice(&0x200u32.to_be_bytes());
        // iso6: tfdt and trun version 1 (signed composition offsets) need the 2012+ edition.
        b.extend_from_slice(b"isomiso6mp41");
        b.extend_from_slice(entry_type);
    });

    // Display size: the coded size stretched by the pixel aspect ratio.
    let display_width = match params.pixel_aspect {
        Some((h, v)) => u64::from(params.width) * u64::from(h) / u64::from(v),
        None => u64::from(params.width),
    };
    let display_width = u32::try_from(display_width).unwrap_or(u32::MAX).min(0xffff);

    write_box(&mut out, b"moov", |b| {
        write_full_box(b, b"mvhd", 0, 0, |b| {
            put_u32s(b, &[0, 0, TIMESCALE, 0]); // creation, modification, timescale, duration
            put_u32s(b, &[0x0001_0000]); // rate 1.0
            b.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
            b.extend_from_slice(&[0; 10]);
            put_u32s(b, &UNITY_MATRIX);
            put_u32s(b, &[0; 6]); // pre_defined
            put_u32s(b, &[TRACK_ID + 1]); // next_track_ID
        });
        write_box(b, b"trak", |b| {
            // flags: track_enabled | track_in_movie
            write_full_box(b, b"tkhd", 0, 0x3, |b| {
                put_u32s(b, &[0, 0, TRACK_ID, 0, 0, 0, 0]);
                b.extend_from_slice(&[0; 8]); // layer, alternate_group, volume, reserved
                put_u32s(b, &UNITY_MATRIX);
                put_u32s(b, &[display_width << 16, params.height << 16]);
            });
            write_box(b, b"mdia", |b| {
                write_full_box(b, b"mdhd", 0, 0, |b| {
                    put_u32s(b, &[0, 0, TIMESCALE, 0]);
                    b.extend_from_slice(&0x55c4u16.to_be_bytes()); // language "und"
                    b.extend_from_slice(&[0; 2]);
                });
                write_full_box(b, b"hdlr", 0, 0, |b| {
                    put_u32s(b, &[0]);
                    b.extend_from_slice(b"vide");
                    put_u32s(b, &[0; 3]);
                    b.extend_from_slice(b"Xueliang video\0");
                });
                write_box(b, b"minf", |b| {
                    write_full_box(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                    write_box(b, b"dinf", |b| {
                        write_full_box(b, b"dref", 0, 0, |b| {
                            put_u32s(b, &[1]);
                            // flags 1: the media data is in this file
                            write_full_box(b, b"url ", 0, 1, |_| {});
                        });
                    });
                    write_box(b, b"stbl", |b| {
                        write_full_box(b, b"stsd", 0, 0, |b| {
                            put_u32s(b, &[1]);
                            write_visual_sample_entry(b, params, entry_type, config_type);
                        });
                        write_full_box(b, b"stts", 0, 0, |b| put_u32s(b, &[0]));
                        write_full_box(b, b"stsc", 0, 0, |b| put_u32s(b, &[0]));
                        write_full_box(b, b"stsz", 0, 0, |b| put_u32s(b, &[0, 0]));
                        write_full_box(b, b"stco", 0, 0, |b| put_u32s(b, &[0]));
                    });
                });
            });
        });
        write_box(b, b"mvex", |b| {
            // No defaults: every trun states each sample's duration, size and flags.
            write_full_box(b, b"trex", 0, 0, |b| put_u32s(b, &[TRACK_ID, 1, 0, 0, 0]));
        });
    });
    Ok(out)
}

/// VisualSampleEntry (14496-12 §12.1.3) with the codec configuration and optional `pasp`.
fn write_visual_sample_entry(
    b: &mut Vec<u8>,
    params: &VideoParams,
    entry_type: &[u8; 4],
    config_type: &[u8; 4],
) {
    write_box(b, entry_type, |b| {
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
        b.extend_from_slice(&[0; 16]); // pre_defined, reserved
        // check_params has bounded both to 16 bits.
        b.extend_from_slice(&(params.width as u16).to_be_bytes());
        b.extend_from_slice(&(params.height as u16).to_be_bytes());
        put_u32s(b, &[0x0048_0000, 0x0048_0000, 0]); // 72 dpi, 72 dpi, reserved
        b.extend_from_slice(&1u16.to_be_bytes()); // frame_count
        b.extend_from_slice(&[0; 32]); // compressorname: empty Pascal string
        b.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
        b.extend_from_slice(&(-1i16).to_be_bytes());
        write_box(b, config_type, |b| {
            b.extend_from_slice(&params.decoder_config)
        });
        if let Some((h, v)) = params.pixel_aspect {
            write_box(b, b"pasp", |b| put_u32s(b, &[h, v]));
        }
    });
}

fn put_u32s(b: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        b.extend_from_slice(&v.to_be_bytes());
    }
}

/// A frame waiting for its fragment: the sample bytes are shared with the ingest, not copied.
struct Pending {
    pts: i64,
    is_key: bool,
    data: Bytes,
}

/// Turns decode-order frames into moof+mdat fragments.
///
/// One builder lives for a whole RTSP session, across fragments and files, so decode
/// timestamps stay continuous. Start a new builder when the session restarts (pts then starts
/// from a new origin).
///
/// Decode times are derived by simulating the decoder's reorder buffer: without B-frames dts
/// equals pts; with them dts runs the observed reorder depth behind, so composition offsets
/// stay non-negative (see the `dts` module for the details and the safety rails).
///
/// `tfdt` in the emitted bytes is on the session timeline. MP4 has no separate start time, so
/// a file whose first fragment says "13 hours" presents 13 hours of nothing first: rebase each
/// file's fragments ([`Fragment::rebase`]) so its first fragment starts at 0.
pub struct FragmentBuilder {
    pending: Vec<Pending>,
    timing: DtsDeriver,
}

impl fmt::Debug for FragmentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentBuilder")
            .field("frames", &self.pending.len())
            .field("bytes", &self.pending_bytes())
            .field("timing", &self.timing)
            .finish()
    }
}

impl Default for FragmentBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FragmentBuilder {
    pub fn new() -> Self {
        FragmentBuilder {
            pending: Vec::new(),
            timing: DtsDeriver::default(),
        }
    }

    /// Queues a frame for the next fragment. Clones the `Bytes` handle; the data is copied
    /// once, into the fragment, by [`Self::finish`].
    pub fn push(&mut self, frame: &VideoFrame) {
        self.pending.push(Pending {
            pts: frame.pts,
            is_key: frame.is_key,
            data: frame.data.clone(),
        });
    }

    /// Frames pushed since the last `finish`.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Sample bytes pushed since the last `finish` (the fragment is this plus ~16 bytes per
    /// frame and ~120 bytes of headers).
    pub fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|p| p.data.len()).sum()
    }

    /// Presentation span covered so far, in 90 kHz ticks: max pts - min pts plus one frame
    /// (the last emitted sample's duration, else an estimate from the pushed frames).
    pub fn duration_ticks(&self) -> i64 {
        let (Some(min), Some(max)) = (
            self.pending.iter().map(|p| p.pts).min(),
            self.pending.iter().map(|p| p.pts).max(),
        ) else {
            return 0;
        };
        let frame = self.timing.last_duration().unwrap_or_else(|| {
            let n = self.pending.len() as i64;
            if n >= 2 && max > min {
                (max - min) / (n - 1)
            } else {
                DEFAULT_DURATION
            }
        });
        max - min + frame
    }

    /// Whether the frames pushed since the last `finish` start with a key frame, so the
    /// fragment can start a file or be the target of a seek.
    pub fn starts_with_key(&self) -> bool {
        self.pending.first().is_some_and(|p| p.is_key)
    }

    /// Emits the fragment for the frames pushed since the last finish.
    ///
    /// `next_pts`: pts of the frame that will follow, if known, so the last sample gets an
    /// exact duration; otherwise the previous sample's duration is repeated (1/25 s if there is
    /// none). With no frames pending this returns an empty fragment (`bytes` empty, `frames`
    /// 0) that must not be written.
    pub fn finish(&mut self, sequence_number: u32, next_pts: Option<i64>) -> Fragment {
        let frames = std::mem::take(&mut self.pending);
        let pts: Vec<i64> = frames.iter().map(|f| f.pts).collect();
        let timing = self.timing.assign(&pts, next_pts);
        let Some(first) = timing.first() else {
            return Fragment {
                bytes: Vec::new(),
                sequence: sequence_number,
                base_dts: 0,
                first_pts: 0,
                duration: 0,
                frames: 0,
                starts_with_key: false,
            };
        };
        let base_dts = first.dts;

        let samples: Vec<Sample> = frames
            .iter()
            .zip(&timing)
            .map(|(f, t)| Sample {
                // A 13-hour sample or a 2 GiB frame cannot happen within one live session;
                // saturate rather than fail the whole fragment.
                duration: u32::try_from(t.duration).unwrap_or(u32::MAX),
                size: u32::try_from(f.data.len()).unwrap_or(u32::MAX),
                flags: if f.is_key {
                    KEY_SAMPLE_FLAGS
                } else {
                    NON_KEY_SAMPLE_FLAGS
                },
                composition_offset: i32::try_from(t.pts - t.dts).unwrap_or(if t.pts > t.dts {
                    i32::MAX
                } else {
                    i32::MIN
                }),
            })
            .collect();
        // Report what the file will say, so `scan` of the written bytes agrees exactly.
        let first_pts = timing
            .iter()
            .zip(&samples)
            .map(|(t, s)| t.dts + i64::from(s.composition_offset))
            .min()
            .unwrap_or(base_dts);
        let duration = samples.iter().map(|s| i64::from(s.duration)).sum();

        let payload: usize = frames.iter().map(|f| f.data.len()).sum();
        let mut bytes = write_moof(sequence_number, base_dts, &samples, payload);
        bytes.reserve(payload + 16);
        write_box(&mut bytes, b"mdat", |b| {
            for f in &frames {
                b.extend_from_slice(&f.data);
            }
        });
        Fragment {
            bytes,
            sequence: sequence_number,
            base_dts,
            first_pts,
            duration,
            frames: samples.len() as u32,
            starts_with_key: frames[0].is_key,
        }
    }
}

struct Sample {
    duration: u32,
    size: u32,
    flags: u32,
    composition_offset: i32,
}

/// moof(mfhd, traf(tfhd, tfdt, trun)) for samples whose data follows in one mdat.
fn write_moof(sequence: u32, base_dts: i64, samples: &[Sample], payload: usize) -> Vec<u8> {
    let moof_len = 8 + 16 + 8 + 16 + 20 + 20 + 16 * samples.len();
    // The mdat header is 8 bytes unless the payload needs the 64-bit size form.
    let mdat_header = if payload + 8 > u32::MAX as usize {
        16
    } else {
        8
    };
    let mut b = Vec::with_capacity(moof_len);
    write_box(&mut b, b"moof", |b| {
        write_full_box(b, b"mfhd", 0, 0, |b| put_u32s(b, &[sequence]));
        write_box(b, b"traf", |b| {
            write_full_box(b, b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, |b| {
                put_u32s(b, &[TRACK_ID]);
            });
            // Always version 1 (64-bit) so rewrite_moof can patch it in place. The dts
            // deriver never produces negative times.
            write_full_box(b, b"tfdt", 1, 0, |b| {
                b.extend_from_slice(&(base_dts.max(0) as u64).to_be_bytes());
            });
            write_full_box(b, b"trun", 1, TRUN_FLAGS, |b| {
                put_u32s(b, &[samples.len() as u32]);
                // Sample data starts right after the mdat header.
                let data_offset = i32::try_from(moof_len + mdat_header).unwrap_or(i32::MAX);
                b.extend_from_slice(&data_offset.to_be_bytes());
                for s in samples {
                    put_u32s(b, &[s.duration, s.size, s.flags]);
                    b.extend_from_slice(&s.composition_offset.to_be_bytes());
                }
            });
        });
    });
    debug_assert_eq!(b.len(), moof_len, "moof size formula out of date");
    b
}

/// One moof+mdat pair, ready to append to a file after its init segment.
#[derive(Clone, PartialEq, Eq)]
pub struct Fragment {
    /// moof followed by mdat.
    pub bytes: Vec<u8>,
    /// `mfhd` sequence_number.
    pub sequence: u32,
    /// `tfdt` baseMediaDecodeTime: dts of the first sample, 90 kHz ticks.
    pub base_dts: i64,
    /// Smallest presentation time of any sample.
    pub first_pts: i64,
    /// Sum of sample durations: the next fragment's `base_dts` minus this one's.
    pub duration: i64,
    pub frames: u32,
    /// The first sample is a sync sample, so playback can start here.
    pub starts_with_key: bool,
}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fragment")
            .field("len", &self.bytes.len())
            .field("sequence", &self.sequence)
            .field("base_dts", &self.base_dts)
            .field("first_pts", &self.first_pts)
            .field("duration", &self.duration)
            .field("frames", &self.frames)
            .field("starts_with_key", &self.starts_with_key)
            .finish()
    }
}

impl Fragment {
    /// Length of the moof box at the start of `bytes` (0 for an empty fragment).
    pub fn moof_len(&self) -> u32 {
        self.bytes
            .get(..4)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The index entry [`scan`](super::scan) will produce for this fragment once it is written
    /// at `offset`, so a writer can keep its index without re-reading the file.
    pub fn info(&self, offset: u64) -> FragmentInfo {
        FragmentInfo {
            offset,
            moof_len: self.moof_len(),
            len: self.bytes.len() as u64,
            sequence: self.sequence,
            base_dts: self.base_dts,
            first_pts: self.first_pts,
            duration: self.duration,
            frames: self.frames,
            starts_with_key: self.starts_with_key,
        }
    }

    /// Renumbers the fragment in place (see [`rewrite_moof`]), keeping the struct in step with
    /// its bytes: presentation times move with the decode times.
    pub fn rebase(&mut self, sequence: u32, base_dts: i64) -> Result<(), Mp4Error> {
        let moof_len = self.moof_len() as usize;
        let moof = self
            .bytes
            .get_mut(..moof_len)
            .ok_or(Mp4Error::MissingBox { path: "moof" })?;
        rewrite_moof(moof, sequence, base_dts)?;
        self.first_pts += base_dts - self.base_dts;
        self.base_dts = base_dts;
        self.sequence = sequence;
        Ok(())
    }
}
