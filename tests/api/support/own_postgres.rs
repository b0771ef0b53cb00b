//! A Postgres server of a test's own (`initdb` + `pg_ctl`, on a free port,
//! data under the temp dir), for what the shared server must never be put
//! through: recovery, read-only, an immediate stop. Stopped and removed
//! however the test ends. As root it runs as the `postgres` user, since
//! Postgres refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
}

/// Where the server binaries are (Debian keeps them off the PATH).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("Postgres server binaries under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `tool` from `bin`, as the `postgres` user when we are root.
fn command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        command
    } else {
        Command::new(bin.join(tool))
    }
}

fn run(bin: &Path, tool: &str, args: &[&str]) {
    let output = command(bin, tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

use super::free_port;

impl OwnPostgres {
    /// A fresh server; in recovery (a standby with nowhere to follow, which
    /// answers read-only) when `in_recovery`.
    pub fn start(in_recovery: bool) -> Self {
        let bin = bin_dir();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("vm-pg-{port}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = dir.join("data");
        let data_str = data.to_str().unwrap().to_owned();
        run(
            &bin,
            "initdb",
            &[
                "-D",
                &data_str,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        if in_recovery {
            std::fs::write(data.join("standby.signal"), "").unwrap();
            if is_root() {
                let _ = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(data.join("standby.signal"))
                    .status();
            }
        }
        let mut server = Self {
            port,
            dir,
            bin,
            running: false,
        };
        server.pg_ctl_start();
        server
    }

    fn pg_ctl_start(&mut self) {
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        run(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        self.running = true;
    }

    /// `127.0.0.1:PORT`, for a URL's host list.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the server at once, as a crash would (`-m immediate`).
    pub fn kill(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            run(
                &self.bin,
                "pg_ctl",
                &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
            );
            self.running = false;
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.join("data");
            let _ = command(&self.bin, "pg_ctl")
                .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
