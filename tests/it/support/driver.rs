//! The drivers of tests/clients/: a client under Node, in Chromium or under Python, driven
//! line by line from a test.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::tokens::SECRET;
use super::{WAIT, node, node_project};

/// A driver of tests/clients/ (a `drive.js` of a client under Node or of Chromium driven by
/// playwright-core, or another client's script) running one client: JSON commands in on
/// stdin, JSON events and replies out on stdout.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, for assertions on what did not happen and for failures.
    pub seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
}

impl Driver {
    /// Runs `dir/drive.js` (relative to the repository), whose node_modules must hold
    /// `package`.
    pub fn start(dir: &str, package: &str) -> Driver {
        Driver::node_script(dir, package, "drive.js", &[])
    }

    /// Runs the Node script `dir/script` with `args`, whose node_modules must hold `package`.
    pub fn node_script(dir: &str, package: &str, script: &str, args: &[&str]) -> Driver {
        let dir = node_project(dir, package);
        let mut command = Command::new(node());
        command.arg(dir.join(script)).args(args);
        Driver::spawn(command)
    }

    /// Runs `command` as a driver: JSON lines in on its stdin, out on its stdout.
    pub fn spawn(mut command: Command) -> Driver {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Driver {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn send(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write a command to drive.js");
    }

    /// Connects with a token function that signs a new token for `user` on every call, the
    /// n-th valid for `ttls[n]` seconds (the last one repeated).
    pub fn connect_minting(&mut self, url: &str, user: &str, ttls: &[u64], options: Value) {
        let mint = json!({"secret": SECRET, "user": user, "ttls": ttls});
        self.send(json!({"op": "connect", "url": url, "mint": mint, "options": options}));
    }

    /// The expiry of the token the n-th call of the token function returned.
    pub fn token_exp(&self, call: u64) -> Value {
        self.seen("token")
            .into_iter()
            .find(|token| token["call"] == call)
            .unwrap_or_else(|| panic!("no token call {call}: {}", self.transcript()))["exp"]
            .clone()
    }

    /// The next line that satisfies `pred` (earlier ones are kept in `seen`).
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.try_recv() {
                Ok(line) => line,
                Err(mpsc::TryRecvError::Empty) if !left.is_zero() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => panic!(
                    "no {what} from drive.js within {WAIT:?}; it said:\n{}\nstderr:\n{}",
                    self.transcript(),
                    self.stderr.lock().unwrap()
                ),
            };
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("drive.js line is not JSON ({e}): {line}"));
            self.seen.push(value.clone());
            if pred(&value) {
                return value;
            }
        }
    }

    pub async fn event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect(&format!("`{name}` event"), |line| {
            line["event"] == name && pred(&line["value"])
        })
        .await
    }

    /// The answer to the last command `op`; it must have succeeded.
    pub async fn reply(&mut self, op: &str) -> Value {
        let line = self
            .expect(&format!("answer to {op}"), |line| line["reply"] == op)
            .await;
        assert_eq!(line["ok"], true, "{op} failed: {line}");
        line["value"].clone()
    }

    pub fn seen(&self, name: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .filter(|line| line["event"] == name)
            .map(|line| &line["value"])
            .collect()
    }

    pub fn transcript(&self) -> String {
        self.seen
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Closes stdin and waits for the process to end by itself, which it does only when the
    /// client holds no socket and no timer: nothing is left to reconnect.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "drive.js still running {WAIT:?} after close: a reconnect is pending; it said:\n{}",
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "drive.js failed ({status}); stderr:\n{}",
            self.stderr.lock().unwrap()
        );
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
