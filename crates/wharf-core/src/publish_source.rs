//! [`PublishSource`]: a batch to publish as a backend reads it, by index,
//! whatever form the caller holds it in.

use crate::message::{Message, MessageId, Timestamp};

/// A batch of messages to publish, read by index: what a broker needs to
/// check, deduplicate, partition and store each one. Implemented for
/// `[Message]`, and by `wharf-proto` for a decoded publish request, so a
/// server stores a message from the request's bytes without building a
/// [`Message`] in between.
pub trait PublishSource {
    /// How many messages.
    fn len(&self) -> usize;

    /// No messages.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of message `i`.
    fn id(&self, i: usize) -> MessageId;

    /// Its key.
    fn key(&self, i: usize) -> Option<&[u8]>;

    /// Its payload.
    fn payload(&self, i: usize) -> &[u8];

    /// Its creation time.
    fn timestamp(&self, i: usize) -> Timestamp;

    /// Its headers in order, each name once (as in [`Headers`](crate::Headers)), appended
    /// to `out`.
    fn headers<'a>(&'a self, i: usize, out: &mut Vec<(&'a [u8], &'a [u8])>);

    /// How many headers it has (each name once, as [`PublishSource::headers`]
    /// gives them).
    fn header_count(&self, i: usize) -> usize;

    /// Its size as [`Message::size`] counts it (payload, key, header names
    /// and values), which the topic's `max_message_bytes` limits.
    fn size(&self, i: usize) -> usize;
}

impl PublishSource for [Message] {
    fn len(&self) -> usize {
        <[Message]>::len(self)
    }

    fn id(&self, i: usize) -> MessageId {
        self[i].id()
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        self[i].key().map(|k| &k[..])
    }

    fn payload(&self, i: usize) -> &[u8] {
        self[i].payload()
    }

    fn timestamp(&self, i: usize) -> Timestamp {
        self[i].timestamp()
    }

    fn headers<'a>(&'a self, i: usize, out: &mut Vec<(&'a [u8], &'a [u8])>) {
        out.extend(
            self[i]
                .headers()
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        );
    }

    fn header_count(&self, i: usize) -> usize {
        self[i].headers().len()
    }

    fn size(&self, i: usize) -> usize {
        self[i].size()
    }
}
