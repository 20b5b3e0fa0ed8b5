//! What a store logs, captured for tests: [`captured`] installs a
//! `tracing` subscriber for the whole test binary (one per binary, so put
//! the tests that use it in a file of their own) that keeps every event,
//! at every level, with its fields as text.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Every event logged by this process: its level and its fields as text
/// (` name=value` each, values in their `Debug` form).
#[derive(Default)]
pub struct Captured(Mutex<Vec<(Level, String)>>);

impl Captured {
    /// Everything captured so far.
    pub fn all(&self) -> MutexGuard<'_, Vec<(Level, String)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Capture(Arc<Captured>);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = String::new();
        event.record(&mut Text(&mut text));
        self.0.all().push((*event.metadata().level(), text));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// The capture of this test binary, installed on first use.
///
/// # Panics
///
/// When another global subscriber was installed first.
pub fn captured() -> &'static Arc<Captured> {
    static CAPTURED: OnceLock<Arc<Captured>> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Arc::new(Captured::default());
        tracing::subscriber::set_global_default(Capture(captured.clone()))
            .expect("the only subscriber of this test binary");
        captured
    })
}

/// The events logged at exactly `level` whose text contains `containing`.
pub fn logged(level: Level, containing: &str) -> Vec<String> {
    captured()
        .all()
        .iter()
        .filter(|(l, text)| *l == level && text.contains(containing))
        .map(|(_, text)| text.clone())
        .collect()
}
