//! Live view framing: a camera's frames as an fMP4 stream for Media Source Extensions.
//!
//! One [`LiveMuxer`] per viewer. It answers the init segment when the stream starts or its
//! parameters change, then one moof+mdat fragment per frame. The viewer's timeline starts at
//! zero and stays continuous: when frames were skipped (a slow viewer, a camera reconnect) the
//! next key frame follows on where the last fragment ended, so the player never meets a hole.

use std::sync::Arc;

use xueliang_core::media::{VideoFrame, VideoParams};

use crate::mp4::{self, FragmentBuilder, Mp4Error};

/// What one frame turned into.
#[derive(Debug, Default)]
pub struct LiveOut {
    /// A new init segment (ftyp + moov), sent before `fragment`: the first frame, or new
    /// stream parameters.
    pub init: Option<Vec<u8>>,
    /// The frame's fragment; `None` while waiting for a key frame.
    pub fragment: Option<Vec<u8>>,
}

/// Turns one viewer's frames into an init segment and fragments.
#[derive(Debug, Default)]
pub struct LiveMuxer {
    params: Option<Arc<VideoParams>>,
    builder: FragmentBuilder,
    sequence: u32,
    /// Added to the builder's decode times to put them on the viewer's timeline; `None` until
    /// the builder's first fragment after a restart.
    offset: Option<i64>,
    /// End of the last fragment sent, on the viewer's timeline.
    end_dts: i64,
    need_key: bool,
}

impl LiveMuxer {
    pub fn new() -> Self {
        LiveMuxer {
            need_key: true,
            ..Default::default()
        }
    }

    /// Frames were lost or the session restarted: wait for a key frame and start decode
    /// times afresh from there, continuing the viewer's timeline.
    pub fn restart(&mut self) {
        self.builder = FragmentBuilder::new();
        self.offset = None;
        self.need_key = true;
    }

    /// Whether frames are being dropped until the next key frame.
    pub fn waiting_for_key(&self) -> bool {
        self.need_key
    }

    /// The parameters of the last init segment, if one was made.
    pub fn params(&self) -> Option<&Arc<VideoParams>> {
        self.params.as_ref()
    }

    pub fn frame(&mut self, f: &VideoFrame) -> Result<LiveOut, Mp4Error> {
        let mut out = LiveOut::default();
        let changed = self
            .params
            .as_ref()
            .is_none_or(|p| !Arc::ptr_eq(p, &f.params) && **p != *f.params);
        if changed {
            if !f.is_key {
                self.need_key = true;
                return Ok(out);
            }
            out.init = Some(mp4::init_segment(&f.params)?);
            self.params = Some(f.params.clone());
            self.restart();
        }
        if self.need_key {
            if !f.is_key {
                return Ok(out);
            }
            self.need_key = false;
        }
        self.builder.push(f);
        self.sequence = self.sequence.wrapping_add(1);
        let mut frag = self.builder.finish(self.sequence, None);
        if frag.frames == 0 {
            return Ok(out);
        }
        let offset = *self.offset.get_or_insert(self.end_dts - frag.base_dts);
        let base = frag.base_dts + offset;
        frag.rebase(self.sequence, base)?;
        self.end_dts = base + frag.duration;
        out.fragment = Some(frag.bytes);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mp4::testutil::{frame, h264_params};

    #[test]
    fn starts_at_a_key_frame_and_keeps_time_continuous_across_a_skip() {
        let params = h264_params();
        let mut m = LiveMuxer::new();
        // A delta frame first: nothing until the key frame.
        let out = m.frame(&frame(&params, 0, false, 100, 1)).unwrap();
        assert!(out.init.is_none() && out.fragment.is_none());

        let mut stream = Vec::new();
        for i in 0..5 {
            let out = m
                .frame(&frame(&params, 900_000 + i * 3600, i == 0, 100, 2))
                .unwrap();
            assert_eq!(out.init.is_some(), i == 0);
            if let Some(init) = out.init {
                stream.extend_from_slice(&init);
            }
            stream.extend_from_slice(&out.fragment.unwrap());
        }
        // Frames lost: the delta frame after is dropped, the next key frame follows on.
        m.restart();
        assert!(
            m.frame(&frame(&params, 2_000_000, false, 100, 3))
                .unwrap()
                .fragment
                .is_none()
        );
        for i in 0..3 {
            let out = m
                .frame(&frame(&params, 2_000_000 + 3600 + i * 3600, i == 0, 100, 4))
                .unwrap();
            assert!(out.init.is_none());
            stream.extend_from_slice(&out.fragment.unwrap());
        }
        let idx = mp4::scan(&mut std::io::Cursor::new(&stream)).unwrap();
        assert_eq!(idx.fragments.len(), 8);
        assert_eq!(idx.fragments[0].base_dts, 0);
        for w in idx.fragments.windows(2) {
            assert_eq!(w[0].base_dts + w[0].duration, w[1].base_dts, "{idx:?}");
            assert!(w[1].sequence > w[0].sequence);
        }
        assert!(idx.fragments[5].starts_with_key);
    }
}
