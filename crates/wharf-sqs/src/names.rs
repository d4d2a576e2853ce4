//! Topic → queue names: SQS names are `[A-Za-z0-9_-]`, at most 80
//! characters (`.fifo` included), while a Wharf topic has dots and up to
//! 249 bytes. The mapping is a pure function, so every process agrees.

/// SQS's limit on a queue name, `.fifo` included.
const MAX_QUEUE_NAME: usize = 80;
const FIFO_SUFFIX: &str = ".fifo";

/// The queue that holds `topic`: `<prefix><topic with '.' → '_'>`, and
/// `.fifo` for FIFO queues. A topic that has a `_` of its own, or whose
/// name would pass 80 characters, gets `-<16 hex digits of a hash of the
/// topic>` after a truncated readable part instead, so two topics never
/// share a queue (`a.b` → `a_b`, `a_b` → `a_b-<hash>`).
pub fn queue_name(prefix: &str, topic: &str, fifo: bool) -> String {
    let suffix = if fifo { FIFO_SUFFIX } else { "" };
    let readable: String = topic
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .collect();
    let room = MAX_QUEUE_NAME - suffix.len();
    if !topic.contains('_') && prefix.len() + readable.len() <= room {
        return format!("{prefix}{readable}{suffix}");
    }
    let hash = format!("-{:016x}", fnv1a64(topic.as_bytes()));
    let keep = room.saturating_sub(prefix.len() + hash.len());
    let cut: String = readable.chars().take(keep).collect();
    format!("{prefix}{cut}{hash}{suffix}")
}

/// FNV-1a, 64 bits: stable across processes and versions (unlike std's hasher).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_become_underscores_and_fifo_queues_end_in_fifo() {
        assert_eq!(queue_name("", "orders.created", false), "orders_created");
        assert_eq!(
            queue_name("shop-", "dlq.orders", true),
            "shop-dlq_orders.fifo"
        );
    }

    #[test]
    fn topics_that_could_collide_or_overflow_get_a_hash() {
        let dotted = queue_name("", "a.b", false);
        let underscored = queue_name("", "a_b", false);
        assert_ne!(dotted, underscored);
        assert!(underscored.starts_with("a_b-"), "{underscored}");
        let long = "x".repeat(249);
        for fifo in [false, true] {
            let q = queue_name("prefix-", &long, fifo);
            assert_eq!(q.len(), 80, "{q}");
            assert_ne!(q, queue_name("prefix-", &"x".repeat(248), fifo));
        }
    }
}
