//! Progress: a bar on a terminal, plain periodic lines otherwise (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    done: u64,
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(label.to_owned());
            bar
        });
        Progress {
            bar,
            label: label.to_owned(),
            done: 0,
            total,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                match self.total {
                    Some(t) => eprintln!("{}: {}/{}", self.label, self.done, t),
                    None => eprintln!("{}: {}", self.label, self.done),
                }
            }
            None => {}
        }
    }

    /// Ends the bar and returns (count, seconds).
    pub fn finish(self) -> (u64, f64) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        (self.done, self.started.elapsed().as_secs_f64())
    }
}
