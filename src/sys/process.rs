//! Running helper programs (runc, `cp`, nanolet's own child modes) without blocking the
//! executor: output is read through non-blocking pipes and the exit status comes from the
//! [`Reaper`].

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use async_io::Async;
use futures_lite::{AsyncReadExt, future};

use super::reaper::{Exit, Reaper};

/// What a finished helper program left.
#[derive(Debug)]
pub struct Output {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn is_success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    /// The last non-empty line of stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// Most output a helper may produce before the rest is dropped (runc's JSON for thousands of
/// containers stays far below this).
const MAX_OUTPUT: u64 = 16 << 20;

/// Runs `cmd` to completion with stdin from /dev/null and stdout/stderr captured.
pub async fn output(reaper: &Reaper, mut cmd: Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().map(|p| pipe_reader(p.into()));
    let stderr = child.stderr.take().map(|p| pipe_reader(p.into()));
    // `child` is dropped without `wait`: the reaper owns the exit status.
    drop(child);
    let (out, err) = future::zip(read_all(stdout), read_all(stderr)).await;
    let exit = reaper.wait(pid).await;
    Ok(Output {
        exit,
        stdout: out?,
        stderr: err?,
    })
}

fn pipe_reader(fd: OwnedFd) -> io::Result<Async<File>> {
    Async::new(File::from(fd))
}

async fn read_all(pipe: Option<io::Result<Async<File>>>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        pipe?.take(MAX_OUTPUT).read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// Runs `cmd` to completion with `input` on its stdin and stdout/stderr captured (CNI plugins
/// read their configuration this way). The input is written without blocking the executor.
pub async fn output_with_input(
    reaper: &Reaper,
    mut cmd: Command,
    input: &[u8],
) -> io::Result<Output> {
    use futures_lite::AsyncWriteExt;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let stdin = child.stdin.take().map(|p| pipe_reader(p.into()));
    let stdout = child.stdout.take().map(|p| pipe_reader(p.into()));
    let stderr = child.stderr.take().map(|p| pipe_reader(p.into()));
    drop(child);
    let write = async {
        if let Some(pipe) = stdin {
            let mut pipe = pipe?;
            // A child that exits without reading its input is not an error here: its exit
            // status says what happened.
            let _ = pipe.write_all(input).await;
            let _ = pipe.close().await;
        }
        io::Result::Ok(())
    };
    let ((written, out), err) =
        future::zip(future::zip(write, read_all(stdout)), read_all(stderr)).await;
    let exit = reaper.wait(pid).await;
    written?;
    Ok(Output {
        exit,
        stdout: out?,
        stderr: err?,
    })
}

/// Runs `cmd`, whose stdio the caller has set, to completion.
pub async fn status(reaper: &Reaper, mut cmd: Command) -> io::Result<Exit> {
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    drop(child);
    Ok(reaper.wait(pid).await)
}
