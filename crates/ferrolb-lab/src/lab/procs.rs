//! Child processes of the lab and the end-to-end tests: started inside a namespace, tied to our
//! life (`setpriv --pdeathsig KILL`, so a crashed lab leaves no agents behind), logs captured to
//! files, killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::netns::Netns;

/// A log file for a new incarnation of `stem` in `dir` that overwrites no earlier one:
/// `stem.log`, then `stem.1.log`, `stem.2.log`, ... (a restarted process keeps its
/// predecessor's log, which is what a chaos run is debugged from).
pub fn numbered_log(dir: &Path, stem: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.log"));
    if !first.exists() {
        return first;
    }
    (1..)
        .map(|n| dir.join(format!("{stem}.{n}.log")))
        .find(|p| !p.exists())
        .expect("an unbounded range has a free name")
}

/// A running child process; SIGKILLed on drop unless it already exited.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args` inside `ns` (or in the current namespace when `None`), with stdout
    /// and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        ns: Option<&Netns>,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match ns {
            Some(ns) => ns.cmd("setpriv"),
            None => Command::new("setpriv"),
        };
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -{sig} {} ({}) failed", self.pid(), self.name);
        }
        Ok(())
    }

    /// SIGKILL and reap (nothing when it already exited).
    pub fn kill(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The exit status once the process has exited (reaps it); `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit up to `timeout`; returns the exit code (None = killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_status() {
                bail!(
                    "{} exited ({s}) before logging {needle:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident set size in KiB (VmHWM), while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        // `setpriv` execs the program, so the child's PID is the program's PID.
        rss_field(self.pid(), "VmHWM:")
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_field(self.pid(), "VmRSS:")
    }
}

/// Reads a `kB` field of /proc/PID/status.
pub fn rss_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::numbered_log;

    #[test]
    fn numbered_log_never_reuses_a_name() {
        let dir = tempfile::tempdir().unwrap();
        let a = numbered_log(dir.path(), "agent-n1");
        assert_eq!(a, dir.path().join("agent-n1.log"));
        std::fs::write(&a, "first").unwrap();
        let b = numbered_log(dir.path(), "agent-n1");
        assert_eq!(b, dir.path().join("agent-n1.1.log"));
        std::fs::write(&b, "second").unwrap();
        assert_eq!(
            numbered_log(dir.path(), "agent-n1"),
            dir.path().join("agent-n1.2.log")
        );
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "first");
    }
}
