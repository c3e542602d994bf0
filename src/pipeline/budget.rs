//! The in-flight budget: how many events and bytes may await Kafka acks before the reader
//! pauses. Pausing the reader is what keeps memory flat however large the backlog.

/// Counts events handed to the producer and not yet acked.
#[derive(Debug)]
pub struct Budget {
    max_events: usize,
    max_bytes: usize,
    events: usize,
    bytes: usize,
}

impl Budget {
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        Budget {
            max_events,
            max_bytes,
            events: 0,
            bytes: 0,
        }
    }

    /// Whether another event may be read. One event larger than `max_bytes` still passes
    /// when nothing is in flight, so an oversized record cannot wedge the stream.
    pub fn has_room(&self) -> bool {
        self.events < self.max_events && self.bytes < self.max_bytes
    }

    /// An event of `bytes` was handed to the producer.
    pub fn take(&mut self, bytes: usize) {
        self.events += 1;
        self.bytes += bytes;
    }

    /// An event of `bytes` was acked (or given up on).
    pub fn release(&mut self, bytes: usize) {
        self.events = self.events.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Events in flight.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_on_event_count() {
        let mut b = Budget::new(2, 1 << 20);
        b.take(10);
        assert!(b.has_room());
        b.take(10);
        assert!(!b.has_room());
        b.release(10);
        assert!(b.has_room());
    }

    #[test]
    fn pauses_on_bytes() {
        let mut b = Budget::new(100, 1000);
        b.take(600);
        assert!(b.has_room());
        b.take(600);
        assert!(!b.has_room());
        b.release(600);
        assert!(b.has_room());
        assert_eq!(b.events(), 1);
    }

    #[test]
    fn oversized_event_passes_alone() {
        let mut b = Budget::new(100, 1000);
        assert!(b.has_room());
        b.take(5000);
        assert!(!b.has_room());
        b.release(5000);
        assert!(b.has_room());
    }
}
