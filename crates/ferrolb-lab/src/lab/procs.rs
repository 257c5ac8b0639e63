//! Child processes of the lab and the root tests: started inside a namespace, tied to our life
//! (`setpriv --pdeathsig KILL`, so a crashed lab leaves no agents behind), logs captured to
//! files, killed on drop. A process also takes lines on its stdin ([`Proc::say`]);
//! [`Proc::next_line`] reads its log line by line.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::netns::Netns;
use crate::wait::try_wait_until;

/// How often a wait on a process looks again.
const POLL: Duration = Duration::from_millis(20);

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
    /// Bytes of the log that [`Proc::next_line`] has read past.
    read: usize,
}

impl Proc {
    /// Starts `program args` inside `ns` (or in the current namespace when `None`), with stdout
    /// and stderr written to `log` and stdin a pipe for [`Proc::say`] (a program that never
    /// reads its stdin does not notice it).
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
        cmd.stdin(Stdio::piped()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
            read: 0,
        })
    }

    /// Writes one line to the process's stdin.
    pub fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let name = &self.name;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .with_context(|| format!("{name}'s stdin is closed"))?;
        writeln!(stdin, "{line}").with_context(|| format!("writing to {name}'s stdin"))?;
        stdin
            .flush()
            .with_context(|| format!("flushing {name}'s stdin"))
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

    /// SIGTERM, then waits for exit up to `timeout`; returns the exit code (None = killed by a
    /// signal).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.signal("TERM")?;
        self.wait_exit(timeout)
    }

    /// Waits for exit up to `timeout`; returns the exit code (None = killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let what = format!("{} to exit", self.name);
        try_wait_until(&what, timeout, POLL, || {
            Ok(self.child.try_wait()?.map(|st| st.code()))
        })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("{} to log {needle:?}", self.name);
        try_wait_until(&what, timeout, POLL, || {
            if self.log_text().contains(needle) {
                return Ok(Some(()));
            }
            if let Some(s) = self.try_status() {
                bail!("{} exited ({s}) before logging {needle:?}", self.name);
            }
            Ok(None)
        })
        .map_err(|e| anyhow!("{e}; log:\n{}", self.log_text()))
    }

    /// Waits for the next complete log line (after the last one this returned) that contains
    /// `needle`, and returns it; fails when `timeout` passes or the process exits first.
    pub fn next_line(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let what = format!("{} to log a line with {needle:?}", self.name);
        try_wait_until(&what, timeout, POLL, || {
            // Read after looking at the status: once it has exited, the log is complete (and
            // its last line counts even without a newline).
            let exited = self.try_status();
            let text = self.log_text();
            let unread = text.get(self.read..).unwrap_or_default();
            for line in unread.split_inclusive('\n') {
                if !line.ends_with('\n') && exited.is_none() {
                    break; // still being written
                }
                self.read += line.len();
                if line.contains(needle) {
                    return Ok(Some(line.trim_end().to_string()));
                }
            }
            if let Some(s) = exited {
                bail!(
                    "{} exited ({s}) before logging a line with {needle:?}",
                    self.name
                );
            }
            Ok(None)
        })
        .map_err(|e| anyhow!("{e}; log:\n{}", self.log_text()))
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
    use super::{numbered_log, Proc};
    use std::path::Path;
    use std::time::Duration;

    #[test]
    fn next_line_reads_each_matching_line_once_and_say_reaches_stdin() {
        let dir = tempfile::tempdir().unwrap();
        // Echoes each stdin line twice, then exits at EOF.
        let script = "while read l; do echo \"got $l\"; echo \"again $l\"; done; echo bye";
        let mut p = Proc::spawn(
            "sh",
            None,
            Path::new("sh"),
            &["-c".to_string(), script.to_string()],
            &[],
            &dir.path().join("sh.log"),
        )
        .unwrap();
        p.say("one").unwrap();
        p.say("two").unwrap();
        let t = Duration::from_secs(10);
        assert_eq!(p.next_line("got", t).unwrap(), "got one");
        assert_eq!(p.next_line("got", t).unwrap(), "got two");
        assert_eq!(p.next_line("again", t).unwrap(), "again two");
        assert!(p.next_line("got", Duration::from_millis(100)).is_err());
        drop(p.child.stdin.take());
        assert_eq!(p.next_line("bye", t).unwrap(), "bye");
        assert_eq!(p.wait_exit(t).unwrap(), Some(0));
        assert!(p
            .next_line("got", t)
            .unwrap_err()
            .to_string()
            .contains("exited"));
    }

    #[test]
    fn say_after_closing_stdin_is_an_error_and_terminate_ends_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Proc::spawn(
            "sleep",
            None,
            Path::new("sleep"),
            &["30".to_string()],
            &[],
            &dir.path().join("sleep.log"),
        )
        .unwrap();
        p.say("ignored").unwrap();
        drop(p.child.stdin.take());
        assert!(p.say("x").is_err());
        assert_eq!(p.terminate(Duration::from_secs(10)).unwrap(), None);
    }

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
