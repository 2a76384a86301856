//! Platform file operations: direct I/O, positional writes, data sync, preallocation,
//! directory sync. Everything platform-specific in the crate is here, behind `cfg`.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens (creating if asked) a segment for writing, with the page cache bypassed where
/// the platform and file system allow: `O_DIRECT` on Linux, `F_NOCACHE` on macOS.
/// Returns whether direct I/O is in effect (tmpfs, for one, refuses `O_DIRECT`).
pub fn open_segment(path: &Path, create: bool, direct: bool) -> io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(create);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let mut direct_opts = opts.clone();
        direct_opts.custom_flags(libc::O_DIRECT);
        match direct_opts.open(path) {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The file system does not support O_DIRECT; if we were creating, the failed
                // open may still have created the file.
                if create {
                    opts.create_new(false).create(true);
                }
            }
            Err(e) => return Err(e),
        }
    }
    let file = opts.open(path)?;
    #[cfg(target_os = "macos")]
    if direct {
        use std::os::unix::io::AsRawFd;
        // SAFETY: fcntl on a valid descriptor with an integer argument.
        let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
        return Ok((file, r == 0));
    }
    let _ = direct;
    Ok((file, false))
}

/// Writes all of `buf` at `offset`.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileExt;
        file.write_all_at(buf, offset)
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        let (mut done, mut at) = (0, offset);
        while done < buf.len() {
            let n = file.seek_write(&buf[done..], at)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n;
            at += n as u64;
        }
        Ok(())
    }
}

/// Makes written data durable: `fdatasync` on Linux, `F_FULLFSYNC` on macOS (plain fsync
/// there does not flush the drive's cache), `FlushFileBuffers` elsewhere.
pub fn sync_data(file: &File) -> io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: fcntl on a valid descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_FULLFSYNC) } == 0 {
            return Ok(());
        }
    }
    file.sync_data()
}

/// Reserves `len` bytes for the file so appends do not allocate blocks (and so a full disk
/// is found when a segment is created, not in the middle of an acknowledged write).
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("segment size too large"))?;
        // SAFETY: posix_fallocate on a valid descriptor; returns an errno value.
        let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        if r == 0 {
            return Ok(());
        }
        if r != libc::EOPNOTSUPP && r != libc::EINVAL {
            return Err(io::Error::from_raw_os_error(r));
        }
    }
    file.set_len(len)
}

/// Makes a create, rename or delete in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}
