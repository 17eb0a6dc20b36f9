//! A Mosquitto of the test's own on a free loopback port, playing the city broker: it can be
//! stopped and started again on the same port, keeping sessions and queued messages (its
//! database is written on SIGTERM).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct CityBroker {
    child: Option<Child>,
    pub port: u16,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl CityBroker {
    /// Configures a broker on a free port without starting it (the city is "down").
    pub fn configure() -> CityBroker {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        // Mosquitto started as root drops to its own user before it writes the database.
        for d in [dir.path(), data.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777))
                .expect("chmod data dir");
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\npersistence_file mosquitto.db\n\
                 max_queued_messages 100000\nmax_inflight_messages 100\nlog_dest stderr\n",
                data.display()
            ),
        )
        .unwrap();
        CityBroker {
            child: None,
            port,
            conf,
            _dir: dir,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto (Debian package mosquitto)");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// SIGTERM (Mosquitto saves its database), then waits for the exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM mosquitto failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "mosquitto did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for CityBroker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
