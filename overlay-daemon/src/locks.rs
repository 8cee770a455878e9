//! One daemon per run directory and per pinned datapath: exclusive `flock`s, held for the
//! daemon's life and released by the kernel when it exits however it exits. A second
//! daemon started by mistake is refused with one line instead of taking over the first
//! one's socket or pins.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another overlayd{} runs with --run-dir {}: stop it, or give this one another --run-dir (and --node-name)", pid_text(.pid), .dir.display())]
    RunDirHeld { dir: PathBuf, pid: Option<u32> },
    #[error("another overlayd holds the datapath pinned at {}: stop it (or `overlayd cleanup` after it stopped), or give this one another --node-name or --bpffs", .dir.display())]
    BpffsHeld { dir: PathBuf },
    #[error("locking {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn pid_text(pid: &Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
}

fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor this process owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

impl HostLock {
    /// `<dir>/overlayd.lock`, holding the owner's pid for the error message.
    pub fn run_dir(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("overlayd.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        if !try_flock(&file).map_err(io)? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::RunDirHeld {
                dir: dir.to_owned(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }

    /// The node's bpffs directory itself (bpffs holds no regular files).
    pub fn bpffs(dir: &Path) -> Result<Self, LockError> {
        let io = |source| LockError::Io {
            path: dir.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(dir)
            .map_err(io)?;
        if !try_flock(&file).map_err(io)? {
            return Err(LockError::BpffsHeld {
                dir: dir.to_owned(),
            });
        }
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("ovl-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = HostLock::run_dir(&dir).unwrap();
        match HostLock::run_dir(&dir) {
            Err(LockError::RunDirHeld { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        let held = HostLock::bpffs(&dir).unwrap();
        assert!(matches!(
            HostLock::bpffs(&dir),
            Err(LockError::BpffsHeld { .. })
        ));
        drop(held);
        drop(first);
        assert!(HostLock::run_dir(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
