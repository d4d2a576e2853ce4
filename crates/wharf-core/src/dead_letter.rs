//! The one way a dead letter is stamped: which headers record where it came
//! from and why, shared by every backend and the router so `wharf dlq` and
//! redrive read the same thing everywhere.

use crate::header;
use crate::message::Message;

/// Where a dead letter came from and why; [`DeadLetter::stamp`] writes it
/// into the message's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// Why: the `reject` reason, or e.g. "max deliveries exceeded".
    pub reason: &'a str,
    /// The topic the message was published to.
    pub topic: &'a str,
    /// Its partition there.
    pub partition: u32,
    /// Its offset there, for backends that have offsets.
    pub offset: Option<u64>,
    /// The consumer group that gave up; `None` for a private subscription.
    pub group: Option<&'a str>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// First failed attempt, ms since the Unix epoch.
    pub first_failure_ms: u64,
    /// Last failed attempt, ms since the Unix epoch.
    pub last_failure_ms: u64,
}

impl DeadLetter<'_> {
    /// Writes the `wharf-dlq-*` / `wharf-original-*` headers (replacing any
    /// from an earlier dead-lettering) and drops the scheduling headers, so
    /// the copy is delivered at once and kept however old it is.
    pub fn stamp(&self, message: &mut Message) {
        let h = message.headers_mut();
        h.remove(header::DELIVER_AT_MS);
        h.remove(header::EXPIRES_AT_MS);
        h.insert(header::DLQ_REASON, self.reason);
        h.insert(header::ORIGINAL_TOPIC, self.topic);
        h.insert(header::ORIGINAL_PARTITION, self.partition.to_string());
        match self.offset {
            Some(o) => h.insert(header::ORIGINAL_OFFSET, o.to_string()),
            None => {
                h.remove(header::ORIGINAL_OFFSET);
            }
        }
        match self.group {
            Some(g) => h.insert(header::DLQ_GROUP, g),
            None => {
                h.remove(header::DLQ_GROUP);
            }
        }
        h.insert(header::ATTEMPTS, self.attempts.to_string());
        h.insert(header::FIRST_FAILURE_MS, self.first_failure_ms.to_string());
        h.insert(header::LAST_FAILURE_MS, self.last_failure_ms.to_string());
    }
}

/// Every header [`DeadLetter::stamp`] writes.
pub const DEAD_LETTER_HEADERS: [&str; 8] = [
    header::DLQ_REASON,
    header::ORIGINAL_TOPIC,
    header::ORIGINAL_PARTITION,
    header::ORIGINAL_OFFSET,
    header::DLQ_GROUP,
    header::ATTEMPTS,
    header::FIRST_FAILURE_MS,
    header::LAST_FAILURE_MS,
];

/// Removes the dead-letter headers, for a message being redriven to its
/// original topic; the application's own headers stay.
pub fn unstamp(message: &mut Message) {
    for h in DEAD_LETTER_HEADERS {
        message.headers_mut().remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_writes_origin_and_unstamp_restores_the_application_headers() {
        let mut m = Message::builder()
            .header("app", "kept")
            .ttl(std::time::Duration::from_secs(1))
            .build();
        let original = m.headers().clone();
        DeadLetter {
            reason: "bad amount",
            topic: "orders",
            partition: 2,
            offset: Some(41),
            group: Some("billing"),
            attempts: 3,
            first_failure_ms: 10,
            last_failure_ms: 20,
        }
        .stamp(&mut m);
        let h = m.headers();
        assert_eq!(h.get(header::DLQ_REASON), Some("bad amount"));
        assert_eq!(h.get(header::ORIGINAL_TOPIC), Some("orders"));
        assert_eq!(h.get(header::ORIGINAL_PARTITION), Some("2"));
        assert_eq!(h.get(header::ORIGINAL_OFFSET), Some("41"));
        assert_eq!(h.get(header::DLQ_GROUP), Some("billing"));
        assert_eq!(h.get(header::ATTEMPTS), Some("3"));
        assert_eq!(h.get(header::FIRST_FAILURE_MS), Some("10"));
        assert_eq!(h.get(header::LAST_FAILURE_MS), Some("20"));
        assert_eq!(h.get(header::EXPIRES_AT_MS), None, "a dead letter is kept");
        unstamp(&mut m);
        assert_eq!(m.headers().get("app"), Some("kept"));
        assert_eq!(m.headers().len(), original.len() - 1);
    }
}
