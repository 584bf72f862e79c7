//! Progress of imports and pulls on stderr: a progress bar on a terminal, plain lines
//! otherwise, so logs and pipes get one line per step instead of redraw sequences.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use bollard::models::CreateImageInfo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The output mode of import and pull progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A progress bar redrawn on stderr.
    Bar,
    /// One line on stderr per step.
    Lines,
    /// Nothing, for front ends that report on their own.
    Quiet,
}

impl Progress {
    /// Returns a bar when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }

    /// Prints one step as a line, unless progress is quiet.
    pub(crate) fn line(self, text: &str) {
        if self != Progress::Quiet {
            eprintln!("airlock: {text}");
        }
    }

    /// Creates a spinner that counts the bytes sent, drawn only in [`Progress::Bar`] mode.
    pub(crate) fn byte_counter(self, message: String) -> ProgressBar {
        if self != Progress::Bar {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}: {bytes} sent ({binary_bytes_per_sec})")
                .expect("a valid template"),
        );
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// One layer of a pull, as the engine last reported it.
#[derive(Debug, Default)]
struct Layer {
    status: String,
    current: u64,
    total: u64,
}

/// Turns the engine's pull stream into a bar or lines.
pub(crate) struct PullProgress {
    mode: Progress,
    reference: String,
    bar: ProgressBar,
    layers: BTreeMap<String, Layer>,
}

/// Statuses of a layer whose download is over, so its bytes count as complete. Docker
/// extracts a layer after it verified it.
const DOWNLOADED: [&str; 5] = [
    "Verifying Checksum",
    "Download complete",
    "Extracting",
    "Pull complete",
    "Already exists",
];

impl PullProgress {
    pub(crate) fn new(mode: Progress, reference: &str) -> PullProgress {
        let bar = if mode == Progress::Bar {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec})",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::hidden()
        };
        let mut progress = PullProgress {
            mode,
            reference: reference.to_owned(),
            bar,
            layers: BTreeMap::new(),
        };
        progress.redraw();
        progress
    }

    /// Takes one message of the engine's stream.
    pub(crate) fn update(&mut self, info: &CreateImageInfo) {
        let Some(status) = info.status.as_deref() else {
            return;
        };
        // Messages about the whole image: "Pulling from NAME" (whose id is the tag),
        // "Digest: ...", "Status: ...".
        let layer_id = info.id.as_deref().filter(|id| !id.is_empty());
        let Some(id) = layer_id.filter(|_| !status.starts_with("Pulling from")) else {
            self.print_line(status);
            return;
        };
        let layer = self.layers.entry(id.to_owned()).or_default();
        if let Some(detail) = &info.progress_detail {
            if status == "Downloading" {
                layer.current = detail
                    .current
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
                layer.total = detail
                    .total
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0);
            }
        }
        if DOWNLOADED.contains(&status) {
            layer.current = layer.total;
        }
        let changed = layer.status != status;
        layer.status = status.to_owned();
        if changed && self.mode == Progress::Lines {
            let line = match layer.total {
                0 => format!("pull {}: layer {id}: {status}", self.reference),
                total => format!(
                    "pull {}: layer {id}: {status} ({})",
                    self.reference,
                    indicatif::BinaryBytes(total)
                ),
            };
            self.mode.line(&line);
        }
        self.redraw();
    }

    fn print_line(&self, status: &str) {
        match self.mode {
            Progress::Bar => self.bar.println(format!("airlock: {status}")),
            Progress::Lines => self
                .mode
                .line(&format!("pull {}: {status}", self.reference)),
            Progress::Quiet => {}
        }
    }

    fn redraw(&mut self) {
        let total: u64 = self.layers.values().map(|layer| layer.total).sum();
        let current: u64 = self.layers.values().map(|layer| layer.current).sum();
        let downloaded = self
            .layers
            .values()
            .filter(|layer| DOWNLOADED.contains(&layer.status.as_str()))
            .count();
        self.bar.set_length(total);
        self.bar.set_position(current);
        self.bar.set_message(format!(
            "pulling {}: {downloaded}/{} layers downloaded",
            self.reference,
            self.layers.len()
        ));
    }

    /// Removes the bar, so the caller can print the result.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
