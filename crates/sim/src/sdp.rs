//! The SDP answered to DESCRIBE: one video medium with its parameter sets in `fmtp`, so clients
//! can configure the decoder before the first key frame arrives.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use xueliang_core::media::VideoCodec;

use crate::Clip;

/// The medium's control URL, relative to the `Content-Base` DESCRIBE answers with.
pub(crate) const TRACK: &str = "trackID=0";

pub(crate) fn describe(clip: &Clip, title: &str, server_ip: IpAddr, session_id: u64) -> String {
    let ip_kind = if server_ip.is_ipv4() { "IP4" } else { "IP6" };
    let fmtp = match clip.codec {
        VideoCodec::H264 => {
            let profile = clip.sps.get(1..4).map(hex::encode).unwrap_or_default();
            format!(
                "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id={profile};sprop-parameter-sets={},{}\r\n",
                B64.encode(&clip.sps),
                B64.encode(&clip.pps)
            )
        }
        VideoCodec::H265 => format!(
            "a=rtpmap:96 H265/90000\r\na=fmtp:96 sprop-vps={};sprop-sps={};sprop-pps={}\r\n",
            B64.encode(clip.vps.as_deref().unwrap_or_default()),
            B64.encode(&clip.sps),
            B64.encode(&clip.pps)
        ),
    };
    format!(
        "v=0\r\n\
         o=- {session_id} 1 IN {ip_kind} {server_ip}\r\n\
         s={title}\r\n\
         c=IN {ip_kind} {server_ip}\r\n\
         t=0 0\r\n\
         a=control:*\r\n\
         a=range:npt=now-\r\n\
         m=video 0 RTP/AVP 96\r\n\
         {fmtp}\
         a=framerate:{fps}\r\n\
         a=x-dimensions:{w},{h}\r\n\
         a=control:{TRACK}\r\n",
        fps = clip.fps,
        w = clip.width,
        h = clip.height,
    )
}
