//! What a "no responders" answer to a publish means, from what JetStream says: no stream
//! stores the subject (the event is unroutable, for good), or a stream does but its leader did
//! not answer (an election, nodes restarting: a pause, retried). The bare status cannot tell
//! the two apart; the stream look-up (`$JS.API.STREAM.NAMES` with the subject) can.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::GetStreamByNameErrorKind;

use crate::destination::{Class, Refusal};

/// What to change when JetStream has no stream for a subject.
const NO_STREAM: &str = "; no JetStream stream stores this subject: add it to the stream's subjects (`nats stream edit OUTBOX --subjects 'outbox.>'`), or route it to one";

/// How long a look-up's answer is reused for the same subject: a burst of answers (every
/// publish in flight when a leader died) asks once.
const REUSE: Duration = Duration::from_secs(2);

/// Looks subjects up, remembering each answer for a moment.
pub struct StreamLookup {
    js: async_nats::jetstream::Context,
    seen: HashMap<String, (Instant, Refusal)>,
}

impl StreamLookup {
    /// Asks through `client`, each look-up waiting at most `timeout`.
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        StreamLookup {
            js: async_nats::jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client),
            seen: HashMap::new(),
        }
    }

    /// The refusal for a publish to `subject` that got "no responders".
    pub async fn no_responders(&mut self, subject: &str) -> Refusal {
        let now = Instant::now();
        if let Some((at, r)) = self.seen.get(subject) {
            if now.duration_since(*at) < REUSE {
                return r.clone();
            }
        }
        let found = self
            .js
            .stream_by_subject(subject)
            .await
            .map_err(|e| match e.kind() {
                GetStreamByNameErrorKind::NotFound => None,
                _ => Some(e.to_string()),
            });
        let r = refusal(found);
        self.seen
            .retain(|_, (at, _)| now.duration_since(*at) < REUSE);
        self.seen.insert(subject.to_owned(), (now, r.clone()));
        r
    }
}

/// The refusal a look-up's answer means: `Ok(stream)` it is stored there, `Err(None)` no
/// stream stores it, `Err(Some(why))` JetStream did not say.
fn refusal(found: Result<String, Option<String>>) -> Refusal {
    match found {
        Ok(stream) => Refusal::new(
            Class::Retriable,
            format!("NATS: stream {stream} stores this subject but no server answered for it (no responders): its leader is being elected or its servers are restarting"),
        ),
        Err(None) => Refusal {
            class: Class::Unroutable,
            message: "NATS: no JetStream stream stores this subject (no responders, and the stream look-up found none)".into(),
            hint: NO_STREAM,
        },
        Err(Some(why)) => Refusal::new(
            Class::Retriable,
            format!("NATS: no responders, and JetStream did not say which stream stores the subject ({why}): the cluster may be electing a leader"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stream_look_up_that_finds_none_is_final() {
        assert_eq!(refusal(Ok("OUTBOX".into())).class, Class::Retriable);
        assert_eq!(
            refusal(Err(Some("timed out".into()))).class,
            Class::Retriable
        );
        let none = refusal(Err(None));
        assert_eq!(none.class, Class::Unroutable);
        assert!(none.hint.contains("nats stream edit"));
    }
}
