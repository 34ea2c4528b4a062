//! Progress of long work: an indicatif bar on a terminal, plain periodic lines when
//! stderr is piped (as in CI or a log file).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a piped run prints a progress line.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    /// Nothing is printed (a worker other than rank 0).
    silent: bool,
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    position: u64,
    message: String,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
                    .expect("valid progress template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        let now = Instant::now();
        Self {
            silent: false,
            bar,
            label: label.to_string(),
            total,
            position: 0,
            message: String::new(),
            started: now,
            last_line: now,
        }
    }

    /// Progress that prints nothing.
    pub fn silent() -> Self {
        let now = Instant::now();
        Self {
            silent: true,
            bar: None,
            label: String::new(),
            total: 0,
            position: 0,
            message: String::new(),
            started: now,
            last_line: now,
        }
    }

    /// Moves to `position` with a status message.
    pub fn update(&mut self, position: u64, message: String) {
        if self.silent {
            return;
        }
        self.position = position;
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(message);
            }
            None => {
                self.message = message;
                if self.last_line.elapsed() >= PLAIN_LINE_INTERVAL {
                    self.print_line();
                }
            }
        }
    }

    /// Prints a line above the bar (or as a plain line).
    pub fn println(&self, line: &str) {
        if self.silent {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(mut self) {
        if self.silent {
            return;
        }
        match self.bar.take() {
            Some(bar) => bar.finish(),
            None => self.print_line(),
        }
    }

    fn print_line(&mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        eprintln!("{} {}/{} {} ({elapsed:.0}s)", self.label, self.position, self.total, self.message);
        self.last_line = Instant::now();
    }
}
