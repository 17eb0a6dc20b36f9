//! Camera and panic-button simulator: an RTSP 1.0 server that serves pre-encoded H.264/H.265 clips to real RTSP
//! clients (ffmpeg, GStreamer, retina) in real time, with scheduled faults.
//!
//! The clips live in memory once ([`Clip`], shared as `Arc`), are packetized to RTP once when the
//! server is bound, and each playing session only stamps 12-byte RTP headers and sleeps until the
//! next access unit is due, so hundreds of streams cost little CPU. Cameras are numbered from 1:
//! `rtsp://HOST:PORT/cam/{n}` is camera `n`'s main stream (`cameras[n - 1]`),
//! `rtsp://HOST:PORT/cam/{n}/sub` its sub stream.
//!
//! The scenes themselves come from [`scene`] (a deterministic street with scripted events and
//! their ground truth) and are encoded once by [`mod@encode`] (libx264/libx265, cached);
//! [`clip_from_annex_b`] turns any Annex B elementary stream into a [`Clip`]. [`buttons`]
//! simulates panic buttons over MQTT, and [`run`] reads a simulator file and runs it all.
//!
//! What real clients get, and why (each point is exercised by the tests in `tests/`):
//! * DESCRIBE answers `Content-Base: <request URL>/` and an SDP with a session-level
//!   `a=control:*`, one `m=video` with `a=control:trackID=0`, parameter sets in `fmtp`
//!   (`sprop-parameter-sets`, or `sprop-vps/sps/pps`), `a=framerate` and `a=range:npt=now-`
//!   (live). ffmpeg, GStreamer's rtspsrc and retina all SETUP `<base>trackID=0` and PLAY the base.
//! * Parameter sets are also sent in-band before every key frame, as cameras do.
//! * An RTCP sender report (with CNAME) goes out before the first picture and every 5 s.
//! * libavformat reports no pts for the very first picture of an RTSP session (ffprobe shows
//!   `N/A`); that is the client's doing, every later picture is stamped correctly.
//! * Sessions belong to their RTSP connection and end with it. Any request or interleaved data
//!   on the connection, or over UDP an RTCP report from the client, keeps them alive.

mod auth;
pub mod buttons;
mod clip;
pub mod encode;
mod error;
mod fault;
mod play;
mod rtp;
mod rtsp;
pub mod run;
pub mod scene;
mod sdp;
mod server;

pub use clip::{AccessUnit, Clip, clip_from_annex_b};
pub use encode::{EncodeOptions, encode, encode_cached};
pub use error::SimError;
pub use fault::{Fault, SimCamera};
pub use server::{DEFAULT_SESSION_TIMEOUT, ServerConfig, SimServer, bind};
