//! Serves Annex B files as simulated cameras until Ctrl-C, for trying clients by hand:
//! `cargo run -p xueliang-sim --example sim_serve -- 127.0.0.1:8554 h264:25:a.h264 h265:25:b.hevc`
//! serves `a.h264` at `/cam/1` and `b.hevc` at `/cam/2`.

use std::sync::Arc;

use xueliang_core::media::VideoCodec;
use xueliang_core::shutdown::Shutdown;
use xueliang_sim::{DEFAULT_SESSION_TIMEOUT, ServerConfig, SimCamera, bind, clip_from_annex_b};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args
        .next()
        .ok_or("usage: sim_serve ADDR CODEC:FPS:FILE...")?;
    let mut cameras = Vec::new();
    for spec in args {
        let mut parts = spec.splitn(3, ':');
        let (Some(codec), Some(fps), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("bad camera {spec:?}; want CODEC:FPS:FILE").into());
        };
        let codec = match codec {
            "h264" => VideoCodec::H264,
            "h265" => VideoCodec::H265,
            other => return Err(format!("unknown codec {other:?}").into()),
        };
        let data = tokio::fs::read(path).await?;
        let clip = clip_from_annex_b(codec, &data, fps.parse()?)?;
        cameras.push(SimCamera {
            main: Arc::new(clip),
            sub: None,
            faults: Vec::new(),
        });
    }
    let server = bind(ServerConfig {
        listen: listen.parse()?,
        cameras,
        auth: None,
        session_timeout: DEFAULT_SESSION_TIMEOUT,
    })
    .await?;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.trigger();
    });
    server.run(shutdown).await;
    Ok(())
}
