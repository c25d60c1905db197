//! What the command-line tests share: running `factum` with a standard input, and starting
//! `factum serve`.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc::Receiver;

/// `factum`, not started yet.
pub fn factum_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_factum"))
}

/// Runs `command` with `stdin` on its standard input; returns what it printed and its exit.
pub fn run(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `factum` with `args` on the embedded store in `data`, `stdin` on its standard input.
pub fn factum_in(data: &Path, args: &[&str], stdin: &str) -> Output {
    run(
        factum_command().args(args).env("FACTUM_DATA_DIR", data),
        stdin,
    )
}

/// The lines a child prints on `output`, as they come (read on a thread of their own, so a
/// test can wait for one with a timeout instead of blocking on the pipe).
pub fn lines_of(output: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Starts `factum serve` with `args` on the data directory `data`; returns the process, its
/// stderr, the first line it printed and the port it listens on.
pub fn spawn_serve(
    args: &[&str],
    data: &std::path::Path,
) -> (Child, BufReader<ChildStderr>, String, u16) {
    let mut all = vec!["serve"];
    all.extend(args);
    spawn(&all, data)
}

/// `factum` with `args` (global options, then `serve` and its own) on `data`; what
/// [`spawn_serve`] returns.
pub fn spawn(
    args: &[&str],
    data: &std::path::Path,
) -> (Child, BufReader<ChildStderr>, String, u16) {
    let mut server = factum_command()
        .args(args)
        .env("FACTUM_DATA_DIR", data)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let port = line
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (server, stderr, line, port)
}

/// The bearer token of [`write_auth`]'s file.
pub const APP_TOKEN: &str = "app-secret-0123456789";

/// Writes `auth.toml` in `dir`: one token, `app`, that may write streams starting `cart-`.
pub fn write_auth(dir: &std::path::Path) -> std::path::PathBuf {
    let auth = dir.join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[token]]\nname = \"app\"\nsecret = \"{APP_TOKEN}\"\nwrite = [\"cart-\"]\n"),
    )
    .unwrap();
    auth
}
