//! Pre-encoded video in memory: access units in decode order plus parameter sets, and the
//! Annex B splitter that builds one from an elementary stream (as `ffmpeg -f h264|hevc` writes).

use bytes::Bytes;
use xueliang_core::media::{VIDEO_CLOCK_RATE, VideoCodec};

use crate::SimError;

/// One picture in decode order.
#[derive(Clone, Debug)]
pub struct AccessUnit {
    /// Presentation time in 90 kHz ticks from the clip's start.
    pub pts: i64,
    /// An IDR (H.264) or IRAP (H.265) picture: decoding can start here.
    pub is_key: bool,
    /// NAL units without start codes; parameter sets are not here but in the [`Clip`].
    pub nals: Vec<Bytes>,
}

/// A loopable clip, shared by every session that plays it.
#[derive(Clone, Debug)]
pub struct Clip {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// H.265 only.
    pub vps: Option<Bytes>,
    pub sps: Bytes,
    pub pps: Bytes,
    /// Decode order; the first one is a key frame.
    pub units: Vec<AccessUnit>,
    /// Loop length in 90 kHz ticks: loop `k` plays unit `i` at `units[i].pts + k * duration`.
    pub duration: i64,
}

/// Splits an Annex B elementary stream into a [`Clip`].
///
/// The first VPS/SPS/PPS seen are kept (later copies are dropped, so the stream must not change
/// parameters); access unit delimiters, end-of-sequence/stream and filler NALs are dropped; SEI
/// stays with the picture it precedes (H.265 suffix SEI with the one it follows). Units before
/// the first key frame are dropped. Timestamps are `index * 90000 / fps`: the stream is assumed
/// to have no B-frames (decode order = presentation order), as `-bf 0` / `bframes=0` produce.
/// Width and height come from the SPS (conformance cropping applied).
pub fn clip_from_annex_b(codec: VideoCodec, data: &[u8], fps: u32) -> Result<Clip, SimError> {
    let err = |reason| SimError::Clip { codec, reason };
    if fps == 0 {
        return Err(err("fps must be positive"));
    }
    let (mut vps, mut sps, mut pps) = (None, None, None);
    let mut groups: Vec<(bool, Vec<Bytes>)> = Vec::new();
    // Non-VCL NALs (SEI) waiting for the picture they precede.
    let mut pending: Vec<Bytes> = Vec::new();
    for nal in split_annex_b(data) {
        let nal = Bytes::copy_from_slice(nal);
        match classify(codec, &nal) {
            Nal::Vps => {
                vps.get_or_insert(nal);
            }
            Nal::Sps => {
                sps.get_or_insert(nal);
            }
            Nal::Pps => {
                pps.get_or_insert(nal);
            }
            Nal::Drop => {}
            Nal::Prefix => pending.push(nal),
            Nal::Suffix => match groups.last_mut() {
                Some((_, nals)) if pending.is_empty() => nals.push(nal),
                _ => pending.push(nal),
            },
            Nal::Slice { first, key } => {
                if first || groups.is_empty() {
                    let mut nals = std::mem::take(&mut pending);
                    nals.push(nal);
                    groups.push((key, nals));
                } else if let Some((k, nals)) = groups.last_mut() {
                    nals.append(&mut pending);
                    nals.push(nal);
                    *k |= key;
                }
            }
        }
    }
    let sps = sps.ok_or_else(|| err("no SPS in the stream"))?;
    let pps = pps.ok_or_else(|| err("no PPS in the stream"))?;
    if codec == VideoCodec::H265 && vps.is_none() {
        return Err(err("no VPS in the H.265 stream"));
    }
    let first_key = groups
        .iter()
        .position(|(k, _)| *k)
        .ok_or_else(|| err("no key frame in the stream"))?;
    let fps64 = i64::from(fps);
    let clock = i64::from(VIDEO_CLOCK_RATE);
    let units: Vec<AccessUnit> = groups
        .into_iter()
        .skip(first_key)
        .enumerate()
        .map(|(i, (is_key, nals))| AccessUnit {
            pts: i as i64 * clock / fps64,
            is_key,
            nals,
        })
        .collect();
    let duration = units.len() as i64 * clock / fps64;
    let (width, height) = match codec {
        VideoCodec::H264 => h264_size(&sps),
        VideoCodec::H265 => h265_size(&sps),
    }
    .map_err(|reason| SimError::Sps { codec, reason })?;
    Ok(Clip {
        codec,
        width,
        height,
        fps,
        vps,
        sps,
        pps,
        units,
        duration,
    })
}

enum Nal {
    Vps,
    Sps,
    Pps,
    Drop,
    /// Belongs to the next picture.
    Prefix,
    /// Belongs to the previous picture.
    Suffix,
    Slice {
        first: bool,
        key: bool,
    },
}

fn classify(codec: VideoCodec, nal: &[u8]) -> Nal {
    match codec {
        VideoCodec::H264 => match nal[0] & 0x1f {
            // first_mb_in_slice is ue(v); a top bit of 1 in its first byte means the value 0.
            t @ 1..=5 => Nal::Slice {
                first: nal.get(1).is_some_and(|b| b & 0x80 != 0),
                key: t == 5,
            },
            7 => Nal::Sps,
            8 => Nal::Pps,
            9..=12 => Nal::Drop,
            _ => Nal::Prefix,
        },
        VideoCodec::H265 => match (nal[0] >> 1) & 0x3f {
            t @ 0..=31 => Nal::Slice {
                // first_slice_segment_in_pic_flag: the first bit after the 2-byte header.
                first: nal.get(2).is_some_and(|b| b & 0x80 != 0),
                key: (16..=23).contains(&t),
            },
            32 => Nal::Vps,
            33 => Nal::Sps,
            34 => Nal::Pps,
            35..=38 => Nal::Drop,
            40 => Nal::Suffix,
            _ => Nal::Prefix,
        },
    }
}

/// NAL units between 3- or 4-byte start codes, without the start codes or trailing zeros.
pub(crate) fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (n, &s) in starts.iter().enumerate() {
        let end = starts.get(n + 1).map_or(data.len(), |&next| next - 3);
        let mut nal = &data[s..end];
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        if !nal.is_empty() {
            out.push(nal);
        }
    }
    out
}

/// Exp-Golomb bit reader over an RBSP (emulation prevention bytes removed).
struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn new(nal: &[u8], header_len: usize) -> Self {
        let mut data = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal.iter().skip(header_len) {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            data.push(b);
        }
        Bits { data, pos: 0 }
    }

    fn bit(&mut self) -> Result<u32, &'static str> {
        let byte = self.data.get(self.pos / 8).ok_or("truncated")?;
        let b = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(b))
    }

    fn bits(&mut self, n: u32) -> Result<u32, &'static str> {
        let mut v = 0;
        for _ in 0..n {
            v = (v << 1) | self.bit()?;
        }
        Ok(v)
    }

    fn skip(&mut self, n: usize) {
        self.pos += n;
    }

    fn ue(&mut self) -> Result<u32, &'static str> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err("bad exp-Golomb code");
            }
        }
        Ok((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    fn se(&mut self) -> Result<i32, &'static str> {
        let v = self.ue()?;
        Ok(if v % 2 == 1 {
            v.div_ceil(2) as i32
        } else {
            -((v / 2) as i32)
        })
    }
}

/// Coded size minus cropping, from an H.264 SPS (ITU-T H.264 7.3.2.1.1).
fn h264_size(sps: &[u8]) -> Result<(u32, u32), &'static str> {
    let mut r = Bits::new(sps, 1);
    let profile = r.bits(8)?;
    r.skip(16); // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma = 1;
    let mut separate = 0;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma = r.ue()?;
        if chroma == 3 {
            separate = r.bit()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            for i in 0..(if chroma == 3 { 12 } else { 8 }) {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            for _ in 0..r.ue()? {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.bit()?;
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?; // direct_8x8_inference_flag
    let mut width = w_mbs * 16;
    let mut height = (2 - frame_mbs_only) * h_units * 16;
    if r.bit()? == 1 {
        let (l, rt, t, b) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (sub_w, sub_h) = match (chroma, separate) {
            (0, _) | (3, 1) => (1, 1),
            (1, _) => (2, 2),
            (2, _) => (2, 1),
            _ => (1, 1),
        };
        width = width.checked_sub(sub_w * (l + rt)).ok_or("bad cropping")?;
        height = height
            .checked_sub(sub_h * (2 - frame_mbs_only) * (t + b))
            .ok_or("bad cropping")?;
    }
    Ok((width, height))
}

/// Conformance-window size from an H.265 SPS (ITU-T H.265 7.3.2.2.1).
fn h265_size(sps: &[u8]) -> Result<(u32, u32), &'static str> {
    let mut r = Bits::new(sps, 2);
    r.skip(4); // sps_video_parameter_set_id
    let sub_layers = r.bits(3)?; // sps_max_sub_layers_minus1
    r.skip(1); // temporal_id_nesting
    // profile_tier_level(1, sub_layers): 96 bits of general profile and level.
    r.skip(96);
    let mut present = Vec::new();
    for _ in 0..sub_layers {
        present.push((r.bit()?, r.bit()?));
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers as usize));
    }
    for (profile, level) in present {
        r.skip(88 * profile as usize + 8 * level as usize);
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma = r.ue()?;
    if chroma == 3 {
        r.bit()?;
    }
    let mut width = r.ue()?;
    let mut height = r.ue()?;
    if r.bit()? == 1 {
        let (l, rt, t, b) = (r.ue()?, r.ue()?, r.ue()?, r.ue()?);
        let (sub_w, sub_h) = match chroma {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        width = width.checked_sub(sub_w * (l + rt)).ok_or("bad cropping")?;
        height = height.checked_sub(sub_h * (t + b)).ok_or("bad cropping")?;
    }
    if width == 0 || height == 0 {
        return Err("zero size");
    }
    Ok((width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals = split_annex_b(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]
        );
    }

    #[test]
    fn signed_exp_golomb() {
        // 1 -> 0, 010 -> 1 (+1), 011 -> 2 (-1), 00100 -> 3 (+2)
        let mut r = Bits::new(&[0b1010_0110, 0b0100_0000], 0);
        assert_eq!(r.se().unwrap(), 0);
        assert_eq!(r.se().unwrap(), 1);
        assert_eq!(r.se().unwrap(), -1);
        assert_eq!(r.se().unwrap(), 2);
    }

    #[test]
    fn rejects_streams_without_parameter_sets() {
        let data = [0, 0, 0, 1, 0x65, 0x88, 0];
        assert!(matches!(
            clip_from_annex_b(VideoCodec::H264, &data, 25),
            Err(SimError::Clip { .. })
        ));
    }
}
