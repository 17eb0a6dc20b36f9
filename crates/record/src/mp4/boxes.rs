//! Box-level byte handling shared by the writer, the scanner and the moof patcher: writing
//! size-prefixed boxes, splitting a buffer into child boxes, and bounds-checked field reads.

use std::ops::Range;

use super::{FourCc, Mp4Error};

/// Appends a box whose size is only known once `body` has written its contents.
pub(crate) fn write_box(buf: &mut Vec<u8>, box_type: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(box_type);
    body(buf);
    let size = buf.len() - start;
    match u32::try_from(size) {
        Ok(size) => buf[start..start + 4].copy_from_slice(&size.to_be_bytes()),
        Err(_) => {
            // Only a multi-gigabyte mdat gets here; switching to the 64-bit `largesize` form
            // costs one move of the payload, which is cheap next to writing it.
            let large = (size + 8) as u64;
            buf[start..start + 4].copy_from_slice(&1u32.to_be_bytes());
            buf.splice(start + 8..start + 8, large.to_be_bytes());
        }
    }
}

/// Appends a "full box": the version byte and 24 flag bits come before the body.
pub(crate) fn write_full_box(
    buf: &mut Vec<u8>,
    box_type: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    write_box(buf, box_type, |buf| {
        buf.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
        body(buf);
    });
}

/// Where one box sits inside a buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct BoxRange {
    pub box_type: FourCc,
    /// Index of the size field.
    pub start: usize,
    /// Index of the first body byte (after size, type and any largesize).
    pub body: usize,
    /// One past the last byte.
    pub end: usize,
}

impl BoxRange {
    pub fn body_range(&self) -> Range<usize> {
        self.body..self.end
    }
}

/// Splits `buf[range]` into consecutive boxes. `parent` and `base` (the file offset of
/// `buf[0]`) only make error messages point at the right place.
pub(crate) fn children(
    buf: &[u8],
    range: Range<usize>,
    parent: FourCc,
    base: u64,
) -> Result<Vec<BoxRange>, Mp4Error> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        let malformed = |reason: String| Mp4Error::Malformed {
            box_type: parent,
            offset: base + pos as u64,
            reason,
        };
        if range.end - pos < 8 {
            return Err(malformed(format!(
                "{} trailing bytes are too short for a box header",
                range.end - pos
            )));
        }
        let size = u32::from_be_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"));
        let box_type = FourCc(buf[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let (header, size) = match size {
            0 => (8, (range.end - pos) as u64),
            1 => {
                if range.end - pos < 16 {
                    return Err(malformed(format!("`{box_type}` largesize is cut off")));
                }
                let large = u64::from_be_bytes(buf[pos + 8..pos + 16].try_into().expect("8 bytes"));
                (16, large)
            }
            n => (8, u64::from(n)),
        };
        if size < header as u64 || size > (range.end - pos) as u64 {
            return Err(malformed(format!(
                "child `{box_type}` claims {size} bytes, {} available",
                range.end - pos
            )));
        }
        let end = pos + size as usize;
        out.push(BoxRange {
            box_type,
            start: pos,
            body: pos + header,
            end,
        });
        pos = end;
    }
    Ok(out)
}

/// The first child of type `box_type`.
pub(crate) fn find(boxes: &[BoxRange], box_type: &[u8; 4]) -> Option<BoxRange> {
    boxes.iter().find(|b| b.box_type.0 == *box_type).copied()
}

/// Like [`find`], but a missing box is an error naming its path.
pub(crate) fn require(
    boxes: &[BoxRange],
    box_type: &[u8; 4],
    path: &'static str,
) -> Result<BoxRange, Mp4Error> {
    find(boxes, box_type).ok_or(Mp4Error::MissingBox { path })
}

/// Big-endian field reader over one box body; running off the end is a `Malformed` error
/// rather than a panic, because the bytes come from disk.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    box_type: FourCc,
    offset: u64,
}

impl<'a> Reader<'a> {
    /// `offset` is the file offset of `buf[0]`, for messages.
    pub fn new(buf: &'a [u8], box_type: FourCc, offset: u64) -> Self {
        Reader {
            buf,
            pos: 0,
            box_type,
            offset,
        }
    }

    pub fn malformed(&self, reason: impl Into<String>) -> Mp4Error {
        Mp4Error::Malformed {
            box_type: self.box_type,
            offset: self.offset,
            reason: reason.into(),
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        if self.buf.len() - self.pos < n {
            return Err(self.malformed(format!(
                "body ends at {} bytes, a field needs {n} more from byte {}",
                self.buf.len(),
                self.pos
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn skip(&mut self, n: usize) -> Result<(), Mp4Error> {
        self.bytes(n).map(|_| ())
    }

    pub fn u16(&mut self) -> Result<u16, Mp4Error> {
        Ok(u16::from_be_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, Mp4Error> {
        Ok(u32::from_be_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, Mp4Error> {
        Ok(u64::from_be_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// Version byte and 24 flag bits of a full box.
    pub fn version_flags(&mut self) -> Result<(u8, u32), Mp4Error> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }
}
