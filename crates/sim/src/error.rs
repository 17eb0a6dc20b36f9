//! The simulator's errors: what went wrong and with which input or address.

use std::net::SocketAddr;

use xueliang_core::media::VideoCodec;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{codec} clip: {reason}")]
    Clip {
        codec: VideoCodec,
        reason: &'static str,
    },
    #[error("{codec} clip: cannot parse the SPS: {reason}")]
    Sps {
        codec: VideoCodec,
        reason: &'static str,
    },
    #[error("camera {camera}: {reason}")]
    Camera { camera: usize, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(std::io::Error),
}
