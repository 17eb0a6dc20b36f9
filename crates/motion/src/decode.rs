//! The libavcodec boundary: one single-threaded H.264/H.265 decoder per camera that turns
//! [`VideoFrame`]s into a borrowed view of the decoded luma plane.
//!
//! Motion analysis only needs a grey picture, so the decoder is tuned for cost rather than
//! fidelity: the in-loop deblocking filter is skipped (about a fifth of decode time; the small
//! drift it causes until the next key frame is far below any motion threshold), it runs one
//! thread (cameras are parallel already, and per-decoder thread pools would oversubscribe the
//! box), and in key-frame-only mode non-key frames never reach libavcodec at all. The Y plane
//! of the decoded YUV picture is handed out as it is: no colour conversion, no scaling.

use std::fmt;
use std::sync::{Arc, Once};

use ffmpeg_next as ff;
use xueliang_core::ErrorKind;
use xueliang_core::media::{VideoCodec, VideoFrame, VideoParams};

/// Why a decoder could not be made or a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// This libavcodec was built without a decoder for the codec.
    #[error("this libavcodec has no {codec} decoder")]
    NoDecoder { codec: VideoCodec },
    /// The avcC / hvcC record is not one libavcodec can start from.
    #[error("the {codec} decoder configuration record ({len} bytes) is unusable: {reason}")]
    Config {
        codec: VideoCodec,
        len: usize,
        reason: &'static str,
    },
    /// libavcodec refused to open a decoder with these parameters.
    #[error("cannot open the {codec} decoder for {width}x{height}: {source}")]
    Open {
        codec: VideoCodec,
        width: u32,
        height: u32,
        source: ff::Error,
    },
    /// The frame's bitstream is damaged, or does not match the parameters.
    #[error("the {codec} decoder rejected the frame at pts {pts} ({len} bytes): {source}")]
    Frame {
        codec: VideoCodec,
        pts: i64,
        len: usize,
        source: ff::Error,
    },
    /// The stream decodes to a picture without an 8-bit luma plane (e.g. 10-bit video).
    #[error("the {codec} stream decodes to {format:?}, which has no 8-bit luma plane")]
    PixelFormat {
        codec: VideoCodec,
        format: ff::format::Pixel,
    },
}

impl DecodeError {
    /// What a caller may do about it: [`ErrorKind::DataLoss`] errors pass with the next key
    /// frame; the others hold until the camera's parameters change.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DecodeError::NoDecoder { .. } => ErrorKind::Unavailable,
            DecodeError::Config { .. } | DecodeError::PixelFormat { .. } => {
                ErrorKind::InvalidArgument
            }
            DecodeError::Open { .. } => ErrorKind::InvalidArgument,
            DecodeError::Frame { .. } => ErrorKind::DataLoss,
        }
    }
}

/// The decoded picture's luma plane, borrowed from the decoder until its next call.
#[derive(Copy, Clone)]
pub struct Luma<'a> {
    /// `stride * height` bytes (the last row may be followed by padding only).
    pub data: &'a [u8],
    /// Bytes from one row to the next; at least `width`.
    pub stride: usize,
    pub width: u32,
    pub height: u32,
    /// Presentation time (90 kHz) of this picture, which with B-frames is not the frame just
    /// sent.
    pub pts: Option<i64>,
    /// Whether the picture was a key frame.
    pub is_key: bool,
}

impl fmt::Debug for Luma<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Luma")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("stride", &self.stride)
            .field("pts", &self.pts)
            .field("is_key", &self.is_key)
            .finish()
    }
}

/// One camera's decoder. Not shared: the worker thread that owns it is the only caller.
pub struct Decoder {
    params: Arc<VideoParams>,
    inner: ff::decoder::Video,
    /// The last picture received: what [`Luma`] borrows.
    picture: ff::frame::Video,
    /// Where `receive_frame` writes: its final, empty-handed call clears its target, so it
    /// never writes into `picture` directly.
    scratch: ff::frame::Video,
    keyframes_only: bool,
    /// Nothing decodes until a key frame: set at start, after a parameter change and after
    /// a rejected frame.
    need_key: bool,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("params", &self.params)
            .field("keyframes_only", &self.keyframes_only)
            .field("need_key", &self.need_key)
            .finish_non_exhaustive()
    }
}

impl Decoder {
    /// Opens a decoder for `params`; frames are expected in MP4 sample form (4-byte NAL
    /// lengths), as the `decoder_config` record announces.
    pub fn new(params: &VideoParams) -> Result<Decoder, DecodeError> {
        Ok(Decoder {
            params: Arc::new(params.clone()),
            inner: open(params)?,
            picture: ff::frame::Video::empty(),
            scratch: ff::frame::Video::empty(),
            keyframes_only: false,
            need_key: true,
        })
    }

    /// The parameters the decoder currently runs with.
    pub fn params(&self) -> &Arc<VideoParams> {
        &self.params
    }

    /// In key-frame-only mode non-key frames are skipped without being decoded. Leaving it
    /// continues with the next key frame unless the frames since the last one are fed again.
    pub fn set_keyframes_only(&mut self, on: bool) {
        if on == self.keyframes_only {
            return;
        }
        self.keyframes_only = on;
        self.inner.skip_frame(if on {
            ff::Discard::NonKey
        } else {
            ff::Discard::Default
        });
    }

    pub fn keyframes_only(&self) -> bool {
        self.keyframes_only
    }

    /// Whether [`Decoder::decode`] would hand `frame` to libavcodec rather than skip it.
    pub fn would_decode(&self, frame: &VideoFrame) -> bool {
        frame.is_key || !(self.keyframes_only || self.need_key)
    }

    /// Decodes one frame. `Ok(None)` when the frame was skipped (key-frame-only mode, or
    /// waiting for a key frame) or the decoder holds the picture back for reordering.
    ///
    /// Frames with different parameters (another `params` value) re-open the decoder first.
    /// After an error the decoder waits for the next key frame.
    pub fn decode(&mut self, frame: &VideoFrame) -> Result<Option<Luma<'_>>, DecodeError> {
        if !Arc::ptr_eq(&self.params, &frame.params) {
            if *self.params != *frame.params {
                // The old decoder is dropped only once the new one is open, so a failed
                // re-open is retried with the next frame while the error is reported now.
                self.inner = open(&frame.params)?;
                self.inner.skip_frame(if self.keyframes_only {
                    ff::Discard::NonKey
                } else {
                    ff::Discard::Default
                });
                self.need_key = true;
            }
            // Equal values in a new Arc: adopt it so later frames take the pointer check.
            self.params = Arc::clone(&frame.params);
        }
        if !self.would_decode(frame) {
            return Ok(None);
        }
        let codec = self.params.codec;
        let mut packet = ff::Packet::copy(&frame.data);
        packet.set_pts(Some(frame.pts));
        if frame.is_key {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        let rejected = |source| DecodeError::Frame {
            codec,
            pts: frame.pts,
            len: frame.data.len(),
            source,
        };
        if let Err(e) = self.inner.send_packet(&packet) {
            self.need_key = true;
            return Err(rejected(e));
        }
        self.need_key = false;
        let mut got = false;
        loop {
            match self.inner.receive_frame(&mut self.scratch) {
                Ok(()) => {
                    std::mem::swap(&mut self.picture, &mut self.scratch);
                    got = true;
                }
                Err(ff::Error::Other {
                    errno: ff::error::EAGAIN,
                })
                | Err(ff::Error::Eof) => break,
                Err(e) => {
                    self.need_key = true;
                    return Err(rejected(e));
                }
            }
        }
        if !got {
            return Ok(None);
        }
        let format = self.picture.format();
        if !has_8bit_luma(format) {
            return Err(DecodeError::PixelFormat { codec, format });
        }
        Ok(Some(Luma {
            data: self.picture.data(0),
            stride: self.picture.stride(0),
            width: self.picture.width(),
            height: self.picture.height(),
            pts: self.picture.pts(),
            is_key: self.picture.is_key(),
        }))
    }
}

/// Formats whose first plane is 8-bit luma at full resolution.
fn has_8bit_luma(format: ff::format::Pixel) -> bool {
    use ff::format::Pixel as P;
    matches!(
        format,
        P::YUV420P
            | P::YUVJ420P
            | P::YUV422P
            | P::YUVJ422P
            | P::YUV444P
            | P::YUVJ444P
            | P::YUV440P
            | P::YUVJ440P
            | P::YUV411P
            | P::YUV410P
            | P::NV12
            | P::NV21
            | P::GRAY8
    )
}

fn open(params: &VideoParams) -> Result<ff::decoder::Video, DecodeError> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only fails on builds without the registries that FFmpeg 4+ no longer needs.
        let _ = ff::init();
    });
    let codec = params.codec;
    let config_err = |reason| DecodeError::Config {
        codec,
        len: params.decoder_config.len(),
        reason,
    };
    // libavcodec treats extradata that does not start with version 1 as Annex B and would then
    // misread the length-prefixed frames, so a bad record is refused here, not at decode time.
    match params.decoder_config.first() {
        None => return Err(config_err("it is empty")),
        Some(1) => {}
        Some(_) => return Err(config_err("configurationVersion is not 1")),
    }
    let min_len = match codec {
        VideoCodec::H264 => 7,
        VideoCodec::H265 => 23,
    };
    if params.decoder_config.len() < min_len {
        return Err(config_err("it is shorter than the fixed header"));
    }
    let id = match codec {
        VideoCodec::H264 => ff::codec::Id::H264,
        VideoCodec::H265 => ff::codec::Id::HEVC,
    };
    let av_codec = ff::decoder::find(id).ok_or(DecodeError::NoDecoder { codec })?;
    let mut ctx = ff::codec::context::Context::new_with_codec(av_codec);
    set_extradata(&mut ctx, &params.decoder_config).map_err(config_err)?;
    ctx.set_threading(ff::threading::Config::count(1));
    let mut dec = ctx.decoder();
    dec.skip_loop_filter(ff::Discard::All);
    dec.open_as(av_codec)
        .and_then(|o| o.video())
        .map_err(|source| DecodeError::Open {
            codec,
            width: params.width,
            height: params.height,
            source,
        })
}

/// Hands the configuration record to the codec context, which owns it from then on.
///
/// ffmpeg-next has no safe setter for `extradata`, and without it libavcodec cannot know the
/// frames carry 4-byte lengths instead of start codes.
#[allow(unsafe_code)]
fn set_extradata(ctx: &mut ff::codec::context::Context, record: &[u8]) -> Result<(), &'static str> {
    use ff::ffi;
    let size = i32::try_from(record.len()).map_err(|_| "it is over 2 GiB")?;
    let padding = ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
    // SAFETY: `ctx` owns a valid AVCodecContext fresh from `new_with_codec`: not opened, not
    // shared, `extradata` null. The buffer comes from av_mallocz as libavcodec requires (it is
    // released with av_freep by avcodec_free_context when `ctx` drops), has `len + padding`
    // bytes with the padding zeroed, and `record.len()` bytes are copied into it from a valid
    // slice that cannot overlap a fresh allocation.
    unsafe {
        let buf = ffi::av_mallocz(record.len() + padding).cast::<u8>();
        if buf.is_null() {
            return Err("no memory for a copy of it");
        }
        std::ptr::copy_nonoverlapping(record.as_ptr(), buf, record.len());
        let raw = ctx.as_mut_ptr();
        (*raw).extradata = buf;
        (*raw).extradata_size = size;
    }
    Ok(())
}
