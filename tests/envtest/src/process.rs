//! Child processes that cannot outlive the test binary.
//!
//! The control plane lives in a `static` (one per test binary), and Rust
//! never drops statics, so cleanup cannot rely on `Drop`. Instead every
//! child runs in its own process group, and one small watchdog (`sh`) holds
//! the read end of a pipe whose write end only this process holds (std
//! opens pipes close-on-exec, so no child inherits it). The process group
//! ids are written into that pipe as children start. When this process ends
//! for any reason — normal exit, a panic, SIGKILL — the kernel closes the
//! write end, the watchdog reads end-of-file, sends SIGTERM to every group,
//! SIGKILL to what is left after a grace period, and removes the work
//! directory.

use std::fs::File;
use std::io::{PipeWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The watchdog: collects process group ids until its standard input ends,
/// then terminates the groups (SIGTERM, up to 5 s, SIGKILL) and removes the
/// work directory `$1`. Interrupts are ignored so that Ctrl-C in a terminal
/// reaches the test binary, whose exit then triggers the cleanup.
const WATCHDOG_SCRIPT: &str = r#"
# dash's kill takes no `--`: "-$g" names the process group.
trap '' INT HUP TERM QUIT
groups=""
while read -r group; do groups="$groups $group"; done
for g in $groups; do kill -TERM "-$g" 2>/dev/null; done
tries=0
while [ "$tries" -lt 50 ]; do
  alive=0
  for g in $groups; do kill -0 "-$g" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 0.1
  tries=$((tries + 1))
done
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done
rm -rf -- "$1"
"#;

/// Starts processes in their own process groups and makes sure they end
/// with this process (see the module documentation).
#[derive(Debug)]
pub struct Supervisor {
    registry: Mutex<PipeWriter>,
    watchdog_pid: u32,
    work_dir: PathBuf,
}

impl Supervisor {
    /// Starts the watchdog, which removes `work_dir` when this process ends.
    pub fn start(work_dir: &Path) -> Result<Self> {
        let (reader, writer) = std::io::pipe().context("create the watchdog pipe")?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("bulkhead-envtest-watchdog")
            .arg(work_dir)
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("start the watchdog (sh)")?;
        Ok(Self {
            registry: Mutex::new(writer),
            watchdog_pid: watchdog.id(),
            work_dir: work_dir.to_owned(),
        })
    }

    /// Process id of the watchdog.
    pub fn watchdog_pid(&self) -> u32 {
        self.watchdog_pid
    }

    /// The directory the watchdog removes at the end.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// Starts `command` in a new process group, with standard output and
    /// error appended to `log`, and registers the group with the watchdog.
    pub fn spawn(&self, name: &str, mut command: Command, log: &Path) -> Result<ManagedProcess> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open the log {}", log.display()))?;
        let err = out.try_clone().context("duplicate the log file")?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // Hold the lock across spawn and registration so that the group is
        // known to the watchdog before anyone could observe the child.
        let mut registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let child = command
            .spawn()
            .with_context(|| format!("start {name} ({command:?})"))?;
        writeln!(registry, "{}", child.id())
            .with_context(|| format!("register {name} with the watchdog"))?;
        registry.flush().context("flush the watchdog pipe")?;
        Ok(ManagedProcess {
            name: name.to_owned(),
            child: Mutex::new(child),
            log: log.to_owned(),
        })
    }
}

/// A child process in its own process group, whose output goes to a log
/// file. Dropping it kills the group; the watchdog covers the case where
/// it is never dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl ManagedProcess {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.lock().id()
    }

    /// The file its standard output and error go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&self) -> Result<Option<std::process::ExitStatus>> {
        self.lock()
            .try_wait()
            .with_context(|| format!("poll {}", self.name))
    }

    /// Fails with the log's tail if the process has exited.
    pub fn ensure_running(&self) -> Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Sends `signal` (a name such as `TERM` or `KILL`) to the whole group.
    pub fn signal(&self, signal: &str) -> Result<()> {
        signal_group(self.pid(), signal)
    }

    /// SIGKILLs the group and reaps the process.
    pub fn kill(&self) -> Result<()> {
        let _gone = self.signal("KILL");
        self.lock()
            .wait()
            .with_context(|| format!("reap {}", self.name))?;
        Ok(())
    }

    /// SIGTERMs the group and waits up to `grace` for the process to exit,
    /// then SIGKILLs it. Returns its exit status.
    pub fn terminate(&self, grace: Duration) -> Result<std::process::ExitStatus> {
        self.signal("TERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _gone = self.signal("KILL");
        self.lock()
            .wait()
            .with_context(|| format!("reap {}", self.name))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        // A reaped pid may have been reused: signal only a running child.
        if matches!(self.lock().try_wait(), Ok(None)) {
            let _gone = signal_group(self.pid(), "KILL");
            let _reaped = self.lock().wait();
        }
    }
}

/// Sends a signal to a process group with `kill(1)` (no `unsafe` libc call).
fn signal_group(group: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{group}"))
        .stderr(Stdio::null())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{signal} -{group} failed (the group is gone)");
    }
    Ok(())
}

/// Whether a process exists and is not a zombie, from `/proc/<pid>/stat`.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Live (non-zombie) processes whose process group is one of `groups`.
pub fn live_members(groups: &[u32]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    let mut fields = rest.split_whitespace();
                    let state = fields.next()?;
                    let _parent = fields.next()?;
                    let group = fields.next()?.parse::<u32>().ok()?;
                    Some(state != "Z" && state != "X" && groups.contains(&group))
                })
                .unwrap_or(false)
        })
        .collect()
}
