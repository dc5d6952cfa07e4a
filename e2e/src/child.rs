//! TEST HARNESS: child processes that cannot outlive the harness.
//!
//! Every process the stand-ins start (embedders, nginx) runs in its own process group so that one
//! signal reaches the process and whatever it forked (nginx workers). Dropping a [`GroupChild`]
//! SIGKILLs the whole group; `PR_SET_PDEATHSIG` covers the case where the harness itself is
//! SIGKILLed and no destructor runs.

use std::io;
use std::process::ExitStatus;

use tokio::process::{Child, Command};

/// A child process leading its own process group, killed (with its group) on drop.
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    pid: i32,
}

impl GroupChild {
    /// Spawn `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        Self::spawn_with_death_signal(cmd, libc::SIGKILL)
    }

    /// [`GroupChild::spawn`], but the child gets `signal` when the spawning thread dies: SIGTERM for a
    /// child that must clean up machine-wide state (the node's pods, bridge and iptables chains).
    pub fn spawn_with_death_signal(cmd: &mut Command, signal: i32) -> io::Result<Self> {
        cmd.process_group(0).kill_on_drop(signal == libc::SIGKILL);
        // SAFETY: the closure only calls async-signal-safe functions (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl: then nobody would kill us.
                if libc::getppid() == 1 {
                    return Err(io::Error::other("parent exited before the child started"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("child exited before its pid was read"))?
            as i32;
        Ok(Self { child, pid })
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send `signal` to the whole process group. Errors (group already gone) are ignored on purpose:
    /// the caller only wants the group to stop.
    pub fn signal_group(&self, signal: i32) {
        // SAFETY: plain syscall with a negative pid = process group.
        unsafe {
            libc::kill(-self.pid, signal);
        }
    }

    /// Send `signal` to the leader only (nginx master: SIGHUP = reload).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(self.pid, signal);
        }
    }

    /// Non-blocking: `Some(status)` once the leader has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Wait for the leader to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGKILL the group and reap the leader.
    pub async fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait().await;
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        // The leader may already be reaped; its group may still hold children (nginx workers).
        self.signal_group(libc::SIGKILL);
    }
}
