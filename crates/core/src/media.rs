//! Encoded video as it travels from ingest to the recorder, the motion detector and live view.
//!
//! Frames carry the camera's own encoded bytes (never transcoded) in MP4 sample form, so the
//! recorder can write them as they are and the decoder can feed them to libavcodec.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::Timestamp;

/// RTP clock rate of video, ticks per second.
pub const VIDEO_CLOCK_RATE: u32 = 90_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    pub fn as_str(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a decoder or muxer must know about a stream before its first frame.
#[derive(Clone, PartialEq, Eq)]
pub struct VideoParams {
    pub codec: VideoCodec,
    pub width: u32,
    pub height: u32,
    /// Body of the `avcC` box (AVCDecoderConfigurationRecord, ISO/IEC 14496-15) for H.264, or
    /// of the `hvcC` box (HEVCDecoderConfigurationRecord) for H.265: parameter sets included.
    pub decoder_config: Bytes,
    /// RFC 6381 `codecs` value, e.g. `avc1.64001f` or `hvc1.1.6.L93.B0`.
    pub rfc6381: String,
    /// Pixel aspect ratio (h_spacing, v_spacing) when the stream states one.
    pub pixel_aspect: Option<(u32, u32)>,
}

impl fmt::Debug for VideoParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VideoParams")
            .field("codec", &self.codec)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("rfc6381", &self.rfc6381)
            .field("decoder_config_len", &self.decoder_config.len())
            .finish()
    }
}

/// One access unit (picture) in decode order.
#[derive(Clone)]
pub struct VideoFrame {
    /// Presentation time in 90 kHz ticks: extended past RTP's 32-bit wrap and continuous
    /// within one session. With B-frames it is not monotonic in decode order.
    pub pts: i64,
    /// Wall time of this frame, mapped from `pts` by the ingest.
    pub wall: Timestamp,
    /// An IDR / IRAP picture: decoding can start here.
    pub is_key: bool,
    /// NAL units, each prefixed by its 4-byte big-endian length (MP4 sample format), without
    /// parameter sets (those live in `params`).
    pub data: Bytes,
    /// Parameters in force for this frame. A different `Arc` (or unequal value) means the
    /// camera changed resolution or codec settings: the recorder starts a new file.
    pub params: Arc<VideoParams>,
    /// RTP packets lost since the previous frame.
    pub loss: u32,
}

impl fmt::Debug for VideoFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VideoFrame")
            .field("pts", &self.pts)
            .field("wall", &self.wall)
            .field("is_key", &self.is_key)
            .field("len", &self.data.len())
            .field("loss", &self.loss)
            .finish()
    }
}
