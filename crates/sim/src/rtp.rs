//! RTP packetization, done once per clip: RFC 6184 (H.264) single NAL unit packets and FU-A,
//! RFC 7798 (H.265) single NAL unit packets and FUs. A session then only prepends a 12-byte
//! header (sequence number, timestamp, SSRC) to each prepared payload.

use bytes::Bytes;
use xueliang_core::media::VideoCodec;

use crate::Clip;

/// Largest RTP payload we send; keeps UDP datagrams under a 1500-byte MTU.
pub(crate) const MAX_PAYLOAD: usize = 1400;

/// One RTP payload: an optional fragmentation header (FU indicator + header, 2 or 3 bytes) and a
/// slice of the NAL unit shared with the clip.
#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) head: [u8; 3],
    pub(crate) head_len: u8,
    pub(crate) body: Bytes,
    pub(crate) marker: bool,
}

impl Packet {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }
}

/// One access unit's packets, in sending order.
#[derive(Debug)]
pub(crate) struct PreparedUnit {
    pub(crate) pts: i64,
    pub(crate) is_key: bool,
    pub(crate) packets: Vec<Packet>,
    /// Payload bytes of all packets, to size the send buffer once.
    pub(crate) bytes: usize,
}

/// A clip packetized once and shared by every session playing it.
#[derive(Debug)]
pub(crate) struct PreparedClip {
    pub(crate) duration: i64,
    pub(crate) units: Vec<PreparedUnit>,
}

impl PreparedClip {
    pub(crate) fn new(clip: &Clip) -> Self {
        let params: Vec<Bytes> = clip
            .vps
            .iter()
            .chain([&clip.sps, &clip.pps])
            .cloned()
            .collect();
        let units = clip
            .units
            .iter()
            .map(|au| {
                let mut packets = Vec::new();
                // Cameras repeat the parameter sets in-band before every key frame; clients that
                // join late or lose the SDP's copy rely on it.
                let nals = if au.is_key {
                    params.iter().chain(au.nals.iter()).collect::<Vec<_>>()
                } else {
                    au.nals.iter().collect()
                };
                for nal in nals {
                    packetize(clip.codec, nal, &mut packets);
                }
                if let Some(last) = packets.last_mut() {
                    last.marker = true;
                }
                let bytes = packets.iter().map(Packet::len).sum();
                PreparedUnit {
                    pts: au.pts,
                    is_key: au.is_key,
                    packets,
                    bytes,
                }
            })
            .collect();
        PreparedClip {
            duration: clip.duration,
            units,
        }
    }
}

fn packetize(codec: VideoCodec, nal: &Bytes, out: &mut Vec<Packet>) {
    if nal.len() <= MAX_PAYLOAD {
        out.push(Packet {
            head: [0; 3],
            head_len: 0,
            body: nal.clone(),
            marker: false,
        });
        return;
    }
    // The NAL header is replaced by the FU headers, which carry its type.
    let (header_len, head, head_len) = match codec {
        VideoCodec::H264 => (1, [(nal[0] & 0xe0) | 28, nal[0] & 0x1f, 0], 2u8),
        VideoCodec::H265 => (
            2,
            [(nal[0] & 0x81) | (49 << 1), nal[1], (nal[0] >> 1) & 0x3f],
            3u8,
        ),
    };
    let fu = usize::from(head_len) - 1;
    let body = nal.slice(header_len..);
    let chunk = MAX_PAYLOAD - usize::from(head_len);
    let count = body.len().div_ceil(chunk);
    for i in 0..count {
        let mut h = head;
        if i == 0 {
            h[fu] |= 0x80;
        }
        if i + 1 == count {
            h[fu] |= 0x40;
        }
        out.push(Packet {
            head: h,
            head_len,
            body: body.slice(i * chunk..((i + 1) * chunk).min(body.len())),
            marker: false,
        });
    }
}

/// Writes the 12-byte RTP header (version 2, payload type 96).
pub(crate) fn header(marker: bool, seq: u16, timestamp: u32, ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 96 | if marker { 0x80 } else { 0 };
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&timestamp.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h264_fu_a_reassembles() {
        let mut nal = vec![0x65u8];
        nal.extend((0..3000u32).map(|i| i as u8));
        let nal = Bytes::from(nal);
        let mut out = Vec::new();
        packetize(VideoCodec::H264, &nal, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(out[0].head[..2], [0x60 | 28, 0x80 | 5]);
        assert_eq!(out[1].head[..2], [0x60 | 28, 5]);
        assert_eq!(out[2].head[..2], [0x60 | 28, 0x40 | 5]);
        let mut re = vec![(out[0].head[0] & 0xe0) | (out[0].head[1] & 0x1f)];
        for p in &out {
            re.extend_from_slice(&p.body);
        }
        assert_eq!(re, nal);
    }

    #[test]
    fn h265_fu_reassembles() {
        // IDR_W_RADL (19): header 0x26 0x01.
        let mut nal = vec![0x26u8, 0x01];
        nal.extend((0..2000u32).map(|i| (i * 7) as u8));
        let nal = Bytes::from(nal);
        let mut out = Vec::new();
        packetize(VideoCodec::H265, &nal, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].head, [49 << 1, 0x01, 0x80 | 19]);
        assert_eq!(out[1].head, [49 << 1, 0x01, 0x40 | 19]);
        let mut re = vec![0x26, 0x01];
        for p in &out {
            re.extend_from_slice(&p.body);
        }
        assert_eq!(re, nal);
    }

    #[test]
    fn small_nal_is_sent_whole() {
        let nal = Bytes::from_static(&[0x41, 1, 2, 3]);
        let mut out = Vec::new();
        packetize(VideoCodec::H264, &nal, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].head_len, 0);
        assert_eq!(out[0].body, nal);
    }
}
