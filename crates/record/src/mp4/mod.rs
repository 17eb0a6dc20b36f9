//! Fragmented MP4 (ISO/IEC 14496-12 ISO BMFF with the 14496-15 H.264 / H.265 sample entries):
//! the init segment, moof+mdat fragments, and the scanner that indexes a file found on disk.
//!
//! Layout of every file the recorder writes:
//!
//! ```text
//! ftyp  moov(mvhd trak(tkhd mdia(mdhd hdlr minf(vmhd dinf stbl))) mvex(trex))
//! moof(mfhd traf(tfhd tfdt trun))  mdat
//! moof ...                          mdat
//! ```
//!
//! One video track (id 1, timescale [`TIMESCALE`], the RTP clock, so frame times are written
//! without rounding). Each fragment is written in one piece, so after a crash a file is a valid
//! prefix plus at most one partial fragment, which [`scan`] finds and reports.

mod boxes;
mod codec;
mod dts;
mod scan;
mod write;

use std::fmt;

use xueliang_core::ErrorKind;

pub use scan::{FileIndex, FragmentInfo, TailProblem, rewrite_moof, scan};
pub use write::{Fragment, FragmentBuilder, init_segment};

/// Ticks per second of the track's media timeline: the 90 kHz RTP video clock.
pub const TIMESCALE: u32 = 90_000;

/// A box type ("four character code") as it appears in a file.
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Damaged files put arbitrary bytes here; escape them so messages stay one readable line.
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Everything that can go wrong writing, scanning or patching fMP4.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    /// The stream parameters cannot be written as an MP4 sample entry.
    #[error("invalid video parameters: {0}")]
    InvalidParams(String),
    /// The file does not start like an MP4 file.
    #[error("not an MP4 file: it starts with a `{found}` box, expected `ftyp`")]
    NotMp4 { found: FourCc },
    /// The file ends before the init segment (ftyp + moov) is complete.
    #[error("init segment truncated: the file ends at byte {file_len}, inside `{box_type}`")]
    TruncatedInit { box_type: FourCc, file_len: u64 },
    /// A box the format requires is absent.
    #[error("missing `{path}` box")]
    MissingBox { path: &'static str },
    /// A box is present but its contents are inconsistent.
    #[error("malformed `{box_type}` box at byte {offset}: {reason}")]
    Malformed {
        box_type: FourCc,
        offset: u64,
        reason: String,
    },
    /// Valid MP4 that this muxer does not write and so cannot handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// `tfdt` is unsigned; a decode time before the start of the media timeline cannot be stored.
    #[error("decode time {0} is negative; tfdt holds an unsigned 64-bit value")]
    NegativeDecodeTime(i64),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Mp4Error {
    /// The service-wide error kind, for callers that report through `xueliang_core::Error`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Mp4Error::InvalidParams(_) | Mp4Error::NegativeDecodeTime(_) => {
                ErrorKind::InvalidArgument
            }
            Mp4Error::NotMp4 { .. }
            | Mp4Error::TruncatedInit { .. }
            | Mp4Error::MissingBox { .. }
            | Mp4Error::Malformed { .. } => ErrorKind::DataLoss,
            Mp4Error::Unsupported(_) => ErrorKind::FailedPrecondition,
            Mp4Error::Io(_) => ErrorKind::Unavailable,
        }
    }
}

/// `sample_flags` (14496-12 §8.8.3.1) of a sync sample: depends on no other picture.
const KEY_SAMPLE_FLAGS: u32 = 2 << 24;
/// `sample_flags` of any other picture: depends on others and is not a sync sample.
const NON_KEY_SAMPLE_FLAGS: u32 = (1 << 24) | SAMPLE_IS_NON_SYNC;
const SAMPLE_IS_NON_SYNC: u32 = 1 << 16;

/// `tfhd` flag: sample data offsets are relative to the start of the enclosing moof.
const TFHD_DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
/// `trun` flags as written: data offset, then per-sample duration, size, flags and
/// composition time offset.
const TRUN_FLAGS: u32 = 0x00_0001 | 0x00_0100 | 0x00_0200 | 0x00_0400 | 0x00_0800;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
