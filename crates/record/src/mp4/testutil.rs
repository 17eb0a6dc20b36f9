//! Test-only stream generators: GOP structures in decode order, frames and parameters.

use std::sync::Arc;

use bytes::Bytes;
use xueliang_core::Timestamp;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};

/// Small deterministic generator, so failures reproduce without a rand dependency.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Lcg(seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Shape of a generated stream.
#[derive(Copy, Clone, Debug)]
pub struct Gop {
    pub frames: usize,
    /// Frames per GOP, key frame included.
    pub length: usize,
    /// B-frames between anchors.
    pub bframes: usize,
    /// Hierarchical B: the middle B-frame of each run is decoded first, as a reference.
    pub pyramid: bool,
}

/// (presentation index, is_key) in decode order, closed GOPs.
pub fn decode_order(g: Gop) -> Vec<(usize, bool)> {
    let mut out = Vec::with_capacity(g.frames);
    for start in (0..g.frames).step_by(g.length) {
        let end = (start + g.length).min(g.frames);
        out.push((start, true));
        let mut i = start + 1;
        while i < end {
            let anchor = (i + g.bframes).min(end - 1);
            out.push((anchor, false));
            let bs: Vec<usize> = (i..anchor).collect();
            if g.pyramid && bs.len() >= 2 {
                let mid = bs[bs.len() / 2];
                out.push((mid, false));
                out.extend(bs.iter().filter(|&&b| b != mid).map(|&b| (b, false)));
            } else {
                out.extend(bs.iter().map(|&b| (b, false)));
            }
            i = anchor + 1;
        }
    }
    out
}

/// The largest number of earlier (decode-order) frames presented after a frame: the reorder
/// depth a decoder needs.
pub fn reorder_depth(order: &[(usize, bool)]) -> usize {
    (0..order.len())
        .map(|i| order[..i].iter().filter(|(p, _)| *p > order[i].0).count())
        .max()
        .unwrap_or(0)
}

/// Splits decode-order frames into fragments that each start at a key frame.
pub fn split_at_keys(order: &[(usize, bool)]) -> Vec<std::ops::Range<usize>> {
    let mut starts: Vec<usize> = order
        .iter()
        .enumerate()
        .filter(|(i, (_, key))| *key || *i == 0)
        .map(|(i, _)| i)
        .collect();
    starts.push(order.len());
    starts.windows(2).map(|w| w[0]..w[1]).collect()
}

pub fn h264_params() -> Arc<VideoParams> {
    // Shaped like an x264 SPS/PPS pair; nothing here decodes them (the ffmpeg tests do that
    // with real streams), only the record's framing matters.
    let sps: &[u8] = &[
        0x67, 0x64, 0x00, 0x0d, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
        0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x42, 0x99, 0x60,
    ];
    let pps: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(pps);
    Arc::new(VideoParams {
        codec: VideoCodec::H264,
        width: 320,
        height: 240,
        decoder_config: Bytes::from(avcc),
        rfc6381: "avc1.64000d".to_owned(),
        pixel_aspect: None,
    })
}

/// A frame whose sample bytes identify it (`tag` repeated), as one length-prefixed NAL unit.
pub fn frame(params: &Arc<VideoParams>, pts: i64, is_key: bool, len: usize, tag: u8) -> VideoFrame {
    let mut data = Vec::with_capacity(len + 4);
    data.extend_from_slice(&(len as u32).to_be_bytes());
    data.resize(len + 4, tag);
    VideoFrame {
        pts,
        wall: Timestamp::from_millis(pts / 90),
        is_key,
        data: Bytes::from(data),
        params: params.clone(),
        loss: 0,
    }
}
