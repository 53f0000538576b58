//! The ring against a VecDeque model, hostile peer indices, the sleep check.
use super::*;
use std::collections::VecDeque;

struct TestRing {
    head: Box<AtomicU32>,
    tail: Box<AtomicU32>,
    storage: Vec<u64>,
}

impl TestRing {
    fn new(entries: u32, start: u32) -> TestRing {
        TestRing {
            head: Box::new(AtomicU32::new(start)),
            tail: Box::new(AtomicU32::new(start)),
            storage: vec![0; entries as usize],
        }
    }

    fn split(&mut self, start: u32) -> (Producer<u64, SharedSlots<u64>>, Consumer<u64, SharedSlots<u64>>) {
        let entries = self.storage.len() as u32;
        let base = NonNull::new(self.storage.as_mut_ptr()).unwrap();
        // SAFETY: storage, head and tail outlive both sides (the test keeps
        // TestRing alive); entries is a power of two; any u64 is valid.
        unsafe {
            let producer = Producer::new(
                NonNull::from(&*self.tail),
                NonNull::from(&*self.head),
                SharedSlots::new(base, entries),
                start,
            );
            let consumer = Consumer::new(
                NonNull::from(&*self.head),
                NonNull::from(&*self.tail),
                SharedSlots::new(base, entries),
                start,
            );
            (producer, consumer)
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Push(u8),
    Publish,
    Pop(u8),
    Release,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![(1u8..40).prop_map(Step::Push), Just(Step::Publish), (1u8..40).prop_map(Step::Pop), Just(Step::Release),]
}

proptest::proptest! {
    /// The ring against a VecDeque model: pushes, batched publishes,
    /// pops, releases, starting near u32::MAX so indices wrap.
    #[test]
    fn ring_matches_vecdeque_model(
        log2_entries in 1u32..7,
        start in proptest::prelude::prop_oneof![proptest::prelude::Just(u32::MAX - 50), proptest::prelude::any::<u32>()],
        steps in proptest::collection::vec(step(), 1..200),
    ) {
        let entries = 1u32 << log2_entries;
        let mut ring = TestRing::new(entries, start);
        let (mut producer, mut consumer) = ring.split(start);
        let mut model: VecDeque<u64> = VecDeque::new(); // published entries
        let mut pending: Vec<u64> = Vec::new();          // pushed, not published
        let mut popped_unreleased = 0u32;
        let mut next_value = 0u64;
        for step in steps {
            match step {
                Step::Push(count) => {
                    for _ in 0..count {
                        let in_ring = model.len() as u32 + pending.len() as u32 + popped_unreleased;
                        let result = producer.push(next_value);
                        if in_ring >= entries {
                            proptest::prop_assert_eq!(result, Err(PushError::Full));
                        } else {
                            proptest::prop_assert_eq!(result, Ok(()));
                            pending.push(next_value);
                            next_value += 1;
                        }
                    }
                }
                Step::Publish => {
                    producer.publish();
                    model.extend(pending.drain(..));
                }
                Step::Pop(count) => {
                    for _ in 0..count {
                        let popped = consumer.pop().unwrap();
                        proptest::prop_assert_eq!(popped, model.pop_front());
                        if popped.is_some() {
                            popped_unreleased += 1;
                        }
                    }
                }
                Step::Release => {
                    consumer.release();
                    popped_unreleased = 0;
                }
            }
        }
    }

    /// Arbitrary values written into the peer's index never panic and are
    /// either accepted (inside the allowed window) or reported.
    #[test]
    fn arbitrary_peer_indices_are_validated(start in proptest::prelude::any::<u32>(), bogus in proptest::prelude::any::<u32>(), pushed in 0u32..8) {
        let mut ring = TestRing::new(8, start);
        let (mut producer, mut consumer) = ring.split(start);
        for value in 0..pushed {
            producer.push(value as u64).unwrap();
        }
        producer.publish();
        ring.tail.store(bogus, Ordering::Relaxed);
        let count = bogus.wrapping_sub(start);
        match consumer.available() {
            Ok(available) => proptest::prop_assert!(available <= 8 && available == count),
            Err(IndexError::TailOutOfRange { .. }) => proptest::prop_assert!(count > 8),
            Err(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
        }
        ring.head.store(bogus, Ordering::Relaxed);
        let result = producer.free(9);
        let behind = bogus.wrapping_sub(start);
        if behind <= pushed {
            proptest::prop_assert_eq!(result, Ok(8 - (pushed - behind)));
        } else {
            let is_head_error = matches!(result, Err(IndexError::HeadOutOfRange { .. }));
            proptest::prop_assert!(is_head_error);
        }
    }
}

#[test]
fn tail_moving_backwards_is_an_error() {
    let mut ring = TestRing::new(8, 10);
    let (mut producer, mut consumer) = ring.split(10);
    for value in 0..4 {
        producer.push(value).unwrap();
    }
    producer.publish();
    assert_eq!(consumer.available(), Ok(4));
    consumer.pop().unwrap();
    ring.tail.store(12, Ordering::Relaxed);
    // The cached tail (14) still says entries are there; the reload once
    // they are consumed must notice the tail went back.
    for _ in 0..3 {
        assert!(consumer.pop().unwrap().is_some());
    }
    assert!(matches!(consumer.pop(), Err(IndexError::TailOutOfRange { .. })));
    let flags = AtomicU32::new(0);
    assert!(matches!(consumer.prepare_sleep(&flags, 1), Err(IndexError::TailOutOfRange { .. })));
}

#[test]
fn sleep_check_sees_published_work() {
    let mut ring = TestRing::new(4, 0);
    let (mut producer, mut consumer) = ring.split(0);
    let flags = AtomicU32::new(0);
    assert_eq!(consumer.prepare_sleep(&flags, 1), Ok(SleepCheck::Sleep { expected_tail: 0 }));
    producer.push(1).unwrap();
    producer.publish();
    assert!(producer.consumer_needs_wakeup(&flags, 1));
    consumer.finish_sleep(&flags);
    assert_eq!(consumer.prepare_sleep(&flags, 1), Ok(SleepCheck::WorkArrived));
    assert_eq!(flags.load(Ordering::Relaxed), 0);
}
