//! Progress on stderr for the steps of an upload or a deploy that take a while, so that stdout
//! stays the result alone. Spinners and bars are drawn only when stderr is a terminal; the line
//! each finished step leaves is printed either way, so that a CI log shows the steps too. An
//! upload shows a bar of the bytes sent.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Duration;

/// A running step; it disappears when dropped or finished.
#[derive(Debug)]
pub struct Step {
    spinner: ProgressBar,
}

impl Step {
    pub fn start(message: impl Into<String>) -> Step {
        let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            spinner.set_style(style);
        }
        spinner.set_message(message.into());
        spinner.enable_steady_tick(Duration::from_millis(100));
        Step { spinner }
    }

    /// Replaces the spinner with a line that stays, e.g. `uploaded 3.1 KiB in 0.2s`.
    pub fn finish(self, message: impl AsRef<str>) {
        self.spinner.finish_and_clear();
        eprintln!("{}", message.as_ref());
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        // A failed step must not leave a spinner line above the error message.
        self.spinner.finish_and_clear();
    }
}

/// A bar of bytes sent: the archive goes out in chunks, each counted when the connection takes
/// it.
pub fn upload_body(archive: Vec<u8>, message: String) -> (reqwest::Body, ProgressBar) {
    const CHUNK: usize = 64 * 1024;
    let bar =
        ProgressBar::with_draw_target(Some(archive.len() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    let counter = bar.clone();
    let chunks: Vec<Vec<u8>> = archive.chunks(CHUNK).map(<[u8]>::to_vec).collect();
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        counter.inc(chunk.len() as u64);
        Ok::<_, std::io::Error>(chunk)
    }));
    (reqwest::Body::wrap_stream(stream), bar)
}
