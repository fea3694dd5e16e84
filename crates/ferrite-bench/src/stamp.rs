//! The header every benchmark payload starts with: who sent it, its sequence number, and when.
//!
//! Publishers and subscribers of one run live in one process, so the send time is nanoseconds on one
//! monotonic clock (an `Instant` taken at the start of the run), immune to wall-clock steps.
//! Layout, little endian: publisher index (u32), sequence number from 1 (u64), send time in ns (u64).

/// Bytes the header takes; the smallest payload a run may use.
pub const STAMP_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    pub fn encode(&self) -> [u8; STAMP_LEN] {
        let mut out = [0u8; STAMP_LEN];
        out[0..4].copy_from_slice(&self.publisher.to_le_bytes());
        out[4..12].copy_from_slice(&self.seq.to_le_bytes());
        out[12..20].copy_from_slice(&self.sent_ns.to_le_bytes());
        out
    }

    /// Reads the header back; `None` when the payload is too short to hold one (not ours).
    pub fn decode(payload: &[u8]) -> Option<Stamp> {
        let header = payload.get(..STAMP_LEN)?;
        Some(Stamp {
            publisher: u32::from_le_bytes(header[0..4].try_into().ok()?),
            seq: u64::from_le_bytes(header[4..12].try_into().ok()?),
            sent_ns: u64::from_le_bytes(header[12..20].try_into().ok()?),
        })
    }
}

/// Per-publisher sequence tracking on one subscriber: MQTT keeps one publisher's messages in order on
/// one subscription, so a sequence number not above the last one seen is a duplicate (QoS 1 redelivery).
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: Vec<u64>,
    pub duplicates: u64,
    /// Sequence numbers skipped; on a shared subscription they went to another member, so only
    /// meaningful for a subscriber that receives everything.
    pub gaps: u64,
}

impl SeqTracker {
    pub fn new(publishers: usize) -> Self {
        SeqTracker { last: vec![0; publishers], duplicates: 0, gaps: 0 }
    }

    /// Records `stamp`; false when it is a duplicate.
    pub fn observe(&mut self, stamp: &Stamp) -> bool {
        let idx = stamp.publisher as usize;
        if idx >= self.last.len() {
            self.last.resize(idx + 1, 0);
        }
        let last = self.last[idx];
        if stamp.seq <= last {
            self.duplicates += 1;
            return false;
        }
        self.gaps += stamp.seq - last - 1;
        self.last[idx] = stamp.seq;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        for stamp in [
            Stamp { publisher: 0, seq: 1, sent_ns: 0 },
            Stamp { publisher: 7, seq: 123_456_789, sent_ns: 9_876_543_210 },
            Stamp { publisher: u32::MAX, seq: u64::MAX, sent_ns: u64::MAX },
        ] {
            let mut payload = stamp.encode().to_vec();
            payload.extend_from_slice(&[0u8; 100]);
            assert_eq!(Stamp::decode(&payload), Some(stamp));
            assert_eq!(Stamp::decode(&stamp.encode()), Some(stamp));
        }
    }

    #[test]
    fn short_payloads_have_no_stamp() {
        assert_eq!(Stamp::decode(&[]), None);
        assert_eq!(Stamp::decode(&[1u8; STAMP_LEN - 1]), None);
    }

    #[test]
    fn tracker_counts_duplicates_and_gaps() {
        let mut tracker = SeqTracker::new(2);
        let stamp = |publisher, seq| Stamp { publisher, seq, sent_ns: 0 };
        assert!(tracker.observe(&stamp(0, 1)));
        assert!(tracker.observe(&stamp(0, 2)));
        assert!(!tracker.observe(&stamp(0, 2)));
        assert!(tracker.observe(&stamp(1, 3)));
        assert!(tracker.observe(&stamp(0, 5)));
        assert!(!tracker.observe(&stamp(0, 4)));
        // A publisher index beyond the expected count still works.
        assert!(tracker.observe(&stamp(5, 1)));
        assert_eq!(tracker.duplicates, 2);
        assert_eq!(tracker.gaps, 2 + 2);
    }
}
