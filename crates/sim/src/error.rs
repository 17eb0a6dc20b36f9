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
    #[error("[buttons]: {}", .0.join("; "))]
    ButtonsConfig(Vec<String>),
    #[error("button {device}: {reason}")]
    Button {
        device: String,
        reason: &'static str,
    },
    #[error("scene spec: {reason}")]
    Scene { reason: String },
    #[error("{codec} encode ({encoder}): {reason}")]
    Encode {
        codec: VideoCodec,
        encoder: &'static str,
        reason: String,
    },
    #[error("{codec} encode ({encoder}): {stage}: {source}")]
    Ffmpeg {
        codec: VideoCodec,
        encoder: &'static str,
        stage: &'static str,
        source: ffmpeg_next::Error,
    },
    #[error("{file}: {reason}")]
    Config { file: String, reason: String },
    #[error("clip cache {path}: {source}")]
    Cache {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
