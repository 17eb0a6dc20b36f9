//! One playing session: a task that sleeps until each access unit is due and sends its
//! prepared packets with this session's RTP header, looping the clip with continuous
//! timestamps and sequence numbers. Send times are `epoch + pts`, never `previous + interval`,
//! so scheduling delays do not accumulate into drift.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use xueliang_core::media::VIDEO_CLOCK_RATE;
use xueliang_core::shutdown::Shutdown;

use crate::Fault;
use crate::rtp::{PreparedClip, header};

/// Where the RTP packets go.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// Interleaved on the RTSP connection, through its writer task.
    Tcp {
        tx: mpsc::Sender<Bytes>,
        channel: u8,
    },
    Udp {
        socket: Arc<UdpSocket>,
        dest: SocketAddr,
        rtcp: Arc<UdpSocket>,
        rtcp_dest: SocketAddr,
    },
}

/// The RTP state a session starts from (announced in RTP-Info).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpStart {
    pub(crate) ssrc: u32,
    pub(crate) seq: u16,
    pub(crate) timestamp: u32,
}

impl RtpStart {
    pub(crate) fn random() -> Self {
        RtpStart {
            ssrc: rand::random(),
            seq: rand::random(),
            timestamp: rand::random(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Player {
    pub(crate) clip: Arc<PreparedClip>,
    pub(crate) out: Output,
    pub(crate) start: RtpStart,
    pub(crate) faults: Vec<Fault>,
    /// Triggered by a `Drop` fault: the connection task closes the socket.
    pub(crate) drop_conn: Shutdown,
    pub(crate) session: String,
}

fn ticks(pts: i64) -> Duration {
    let pts = u128::try_from(pts).unwrap_or(0);
    let nanos = pts * 1_000_000_000 / u128::from(VIDEO_CLOCK_RATE);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

impl Player {
    /// Runs until the output goes away, a `Drop` fault fires or the task is aborted (TEARDOWN,
    /// session timeout, connection closed).
    pub(crate) async fn run(self) {
        let started = Instant::now();
        let clip = &self.clip;
        let drop_at = self.faults.iter().find_map(|f| match f {
            Fault::Drop { at } => Some(started + *at),
            _ => None,
        });
        let stalls: Vec<(Instant, Instant)> = self
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Stall { at, for_ } => Some((started + *at, started + *at + *for_)),
                _ => None,
            })
            .collect();
        let mut restarts: Vec<Instant> = self
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::NewSsrc { at } => Some(started + *at),
                _ => None,
            })
            .collect();
        restarts.sort();
        let mut restarts = restarts.into_iter().peekable();

        let mut rtp = self.start;
        let mut epoch = started;
        let mut loop_base = 0i64;
        let mut index = 0usize;
        let mut need_key = false;
        let mut stalled = false;
        let mut buf = BytesMut::new();
        let mut stats = SenderStats::default();
        let mut next_report = started;
        loop {
            let unit = &clip.units[index];
            let pts = loop_base + unit.pts;
            let due = epoch + ticks(pts);
            if let Some(at) = drop_at.filter(|at| *at <= due) {
                tokio::time::sleep_until(at).await;
                tracing::info!(session = %self.session, "fault: dropping the connection");
                self.drop_conn.trigger();
                return;
            }
            if let Some(at) = restarts.next_if(|at| *at <= due) {
                tokio::time::sleep_until(at).await;
                rtp = RtpStart::random();
                stats = SenderStats::default();
                next_report = at;
                tracing::info!(session = %self.session, ssrc = format_args!("{:08X}", rtp.ssrc), "fault: restarting the stream with a new SSRC");
                epoch = at;
                loop_base = 0;
                index = 0;
                continue;
            }
            let in_stall = stalls.iter().any(|(from, to)| (*from..*to).contains(&due));
            if in_stall != stalled {
                stalled = in_stall;
                tracing::info!(session = %self.session, stalled, "fault: stall");
            }
            if in_stall {
                need_key = true;
            }
            let skip = in_stall || (need_key && !unit.is_key);
            if !skip {
                need_key = false;
                tokio::time::sleep_until(due).await;
                let timestamp = rtp.timestamp.wrapping_add(pts as u32);
                if due >= next_report {
                    // The report maps this picture's RTP time to the wall clock now: the two
                    // agree because the picture is sent exactly when it is due.
                    next_report = due + REPORT_INTERVAL;
                    self.report(rtp.ssrc, timestamp, &stats).await;
                }
                if !self
                    .send(unit, timestamp, rtp.ssrc, &mut rtp.seq, &mut buf)
                    .await
                {
                    tracing::debug!(session = %self.session, "output closed; player ends");
                    return;
                }
                stats.packets = stats.packets.wrapping_add(unit.packets.len() as u32);
                stats.octets = stats.octets.wrapping_add(unit.bytes as u32);
            }
            index += 1;
            if index == clip.units.len() {
                index = 0;
                loop_base += clip.duration;
            }
        }
    }

    /// Sends an RTCP sender report with a CNAME (RFC 3550 6.4.1, 6.5.1); best effort.
    async fn report(&self, ssrc: u32, timestamp: u32, stats: &SenderStats) {
        let packet = sender_report(ssrc, timestamp, stats, std::time::SystemTime::now());
        match &self.out {
            Output::Tcp { tx, channel } => {
                let mut b = BytesMut::with_capacity(4 + packet.len());
                b.put_u8(b'$');
                b.put_u8(channel.wrapping_add(1));
                b.put_u16(packet.len() as u16);
                b.put_slice(&packet);
                let _ = tx.send(b.freeze()).await;
            }
            Output::Udp {
                rtcp, rtcp_dest, ..
            } => {
                if let Err(e) = rtcp.send_to(&packet, *rtcp_dest).await {
                    tracing::debug!(session = %self.session, err = %e, "RTCP send failed");
                }
            }
        }
    }

    /// Sends one unit's packets; `false` once the output is gone.
    async fn send(
        &self,
        unit: &crate::rtp::PreparedUnit,
        timestamp: u32,
        ssrc: u32,
        seq: &mut u16,
        buf: &mut BytesMut,
    ) -> bool {
        match &self.out {
            Output::Tcp { tx, channel } => {
                buf.reserve(unit.bytes + unit.packets.len() * 16);
                for p in &unit.packets {
                    buf.put_u8(b'$');
                    buf.put_u8(*channel);
                    buf.put_u16((12 + p.len()) as u16);
                    buf.put_slice(&header(p.marker, *seq, timestamp, ssrc));
                    buf.put_slice(&p.head[..usize::from(p.head_len)]);
                    buf.put_slice(&p.body);
                    *seq = seq.wrapping_add(1);
                }
                tx.send(buf.split().freeze()).await.is_ok()
            }
            Output::Udp { socket, dest, .. } => {
                for p in &unit.packets {
                    buf.clear();
                    buf.put_slice(&header(p.marker, *seq, timestamp, ssrc));
                    buf.put_slice(&p.head[..usize::from(p.head_len)]);
                    buf.put_slice(&p.body);
                    *seq = seq.wrapping_add(1);
                    // The client may not be listening yet or any more (ICMP port unreachable
                    // surfaces here); UDP sessions end by TEARDOWN or timeout, not by this.
                    if let Err(e) = socket.send_to(buf, *dest).await {
                        tracing::debug!(session = %self.session, err = %e, "RTP send failed");
                    }
                }
                true
            }
        }
    }
}

/// Cameras send sender reports every few seconds; clients use them for lip sync and wall time.
const REPORT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct SenderStats {
    packets: u32,
    octets: u32,
}

/// Seconds between the NTP epoch (1900) and the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// SR (PT 200) followed by SDES (PT 202) with a CNAME, as one compound packet.
fn sender_report(
    ssrc: u32,
    timestamp: u32,
    stats: &SenderStats,
    now: std::time::SystemTime,
) -> Vec<u8> {
    let since_unix = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ntp_secs = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let ntp_frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    let mut p = Vec::with_capacity(52);
    p.extend_from_slice(&[0x80, 200, 0, 6]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&(ntp_secs as u32).to_be_bytes());
    p.extend_from_slice(&(ntp_frac as u32).to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p.extend_from_slice(&stats.packets.to_be_bytes());
    p.extend_from_slice(&stats.octets.to_be_bytes());
    // SDES: one chunk, CNAME "xueliang-sim", end item, padded to 32 bits.
    let cname = b"xueliang-sim";
    let mut chunk = Vec::with_capacity(24);
    chunk.extend_from_slice(&ssrc.to_be_bytes());
    chunk.push(1);
    chunk.push(cname.len() as u8);
    chunk.extend_from_slice(cname);
    chunk.push(0);
    while chunk.len() % 4 != 0 {
        chunk.push(0);
    }
    p.extend_from_slice(&[0x81, 202]);
    p.extend_from_slice(&((chunk.len() / 4) as u16).to_be_bytes());
    p.extend_from_slice(&chunk);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_layout() {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(1_500);
        let p = sender_report(
            0xAABBCCDD,
            90_000,
            &SenderStats {
                packets: 3,
                octets: 4000,
            },
            now,
        );
        assert_eq!(&p[..4], &[0x80, 200, 0, 6]);
        assert_eq!(&p[4..8], &0xAABBCCDDu32.to_be_bytes());
        assert_eq!(
            u32::from_be_bytes(p[8..12].try_into().unwrap()),
            2_208_988_801
        );
        assert_eq!(u32::from_be_bytes(p[12..16].try_into().unwrap()), 1 << 31);
        assert_eq!(u32::from_be_bytes(p[16..20].try_into().unwrap()), 90_000);
        // SDES length field counts 32-bit words after the header.
        let sdes = &p[28..];
        assert_eq!(sdes[1], 202);
        assert_eq!(
            usize::from(u16::from_be_bytes([sdes[2], sdes[3]])) * 4 + 4,
            sdes.len()
        );
        assert_eq!(p.len() % 4, 0);
    }
}
