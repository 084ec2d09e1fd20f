//! Per-subscription delivery accounting: loss, duplicates, reordering.
//!
//! Each (connection, channel) pair starts at the offset the `subscribe`
//! result named. Every delivery moves it forward; a jump leaves a gap that a
//! late arrival can fill (then it counts as reordered, not lost); an offset
//! seen before is a duplicate. Offsets the connection published itself
//! (`send_data` is not echoed) are skipped. At the end the channel's final
//! offset turns whatever is still missing into loss, and deliveries past
//! it (publications whose acknowledgement the publisher never got) are
//! set apart: they can be neither expected nor lost.
#![forbid(unsafe_code)]

/// Counts one subscription produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Deliveries of offsets past the final one (not in `delivered`).
    pub beyond_final: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.beyond_final += o.beyond_final;
    }
}

/// What one delivery was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    InOrder,
    /// In order after a gap of this many publications.
    Gap(u64),
    /// Filled an earlier gap.
    Reordered,
    Duplicate,
}

/// The offset state of one subscription.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Highest offset seen (or the subscribe result's offset).
    last: u64,
    /// Offsets below `last` not yet seen, as inclusive ranges.
    missing: Vec<(u64, u64)>,
    /// Own publications above `last`, not expected back.
    skips: Vec<u64>,
    /// Own publications passed over (or found in a gap): neither
    /// delivered nor missing.
    own_passed: Vec<u64>,
    pub counts: Counts,
}

impl OffsetTracker {
    pub fn new(start: u64) -> Self {
        OffsetTracker {
            last: start,
            ..Default::default()
        }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    fn skipped_between(&mut self, lo: u64, hi: u64) -> u64 {
        // Own offsets in (lo, hi) are not gaps; drop them once passed.
        let before = self.skips.len();
        let passed = &mut self.own_passed;
        self.skips.retain(|&s| {
            let inside = s > lo && s < hi;
            if inside {
                passed.push(s);
            }
            !inside
        });
        (before - self.skips.len()) as u64
    }

    /// Records a delivery of `offset`.
    pub fn handle_delivery(&mut self, offset: u64) -> Outcome {
        if offset == self.last + 1 && self.skips.is_empty() {
            self.last = offset;
            self.counts.delivered += 1;
            return Outcome::InOrder;
        }
        if offset > self.last {
            let from = self.last + 1;
            let mut own: Vec<u64> = self
                .skips
                .iter()
                .copied()
                .filter(|&s| s >= from && s < offset)
                .collect();
            own.sort_unstable();
            let skipped = self.skipped_between(self.last, offset);
            debug_assert_eq!(skipped as usize, own.len());
            let mut lo = from;
            for s in own {
                if lo < s {
                    self.missing.push((lo, s - 1));
                }
                lo = s + 1;
            }
            if lo < offset {
                self.missing.push((lo, offset - 1));
            }
            // Skips at or below the new offset can no longer matter.
            self.skips.retain(|&s| s > offset);
            let gap = (offset - from) - skipped;
            self.last = offset;
            self.counts.delivered += 1;
            self.counts.lost += gap;
            return if gap == 0 {
                Outcome::InOrder
            } else {
                Outcome::Gap(gap)
            };
        }
        if let Some(i) = self
            .missing
            .iter()
            .position(|&(a, b)| a <= offset && offset <= b)
        {
            let (a, b) = self.missing[i];
            self.missing.swap_remove(i);
            if a < offset {
                self.missing.push((a, offset - 1));
            }
            if offset < b {
                self.missing.push((offset + 1, b));
            }
            self.counts.delivered += 1;
            self.counts.lost -= 1;
            self.counts.reordered += 1;
            return Outcome::Reordered;
        }
        self.counts.duplicates += 1;
        Outcome::Duplicate
    }

    /// Marks `offset` as published by this connection itself.
    pub fn handle_own(&mut self, offset: u64) {
        if offset > self.last {
            self.skips.push(offset);
        } else if let Some(i) = self
            .missing
            .iter()
            .position(|&(a, b)| a <= offset && offset <= b)
        {
            let (a, b) = self.missing[i];
            self.missing.swap_remove(i);
            if a < offset {
                self.missing.push((a, offset - 1));
            }
            if offset < b {
                self.missing.push((offset + 1, b));
            }
            self.counts.lost -= 1;
            self.own_passed.push(offset);
        }
    }

    /// Publications up to `final_offset` still missing, not counted yet.
    pub fn outstanding(&self, final_offset: u64) -> u64 {
        if final_offset <= self.last {
            return 0;
        }
        let own = self
            .skips
            .iter()
            .filter(|&&s| s > self.last && s <= final_offset)
            .count() as u64;
        final_offset - self.last - own
    }

    /// Closes the books at `final_offset`: the tail still missing is loss.
    /// Offsets past it (a publication sent but never acknowledged, so not
    /// in the final) are neither delivered nor lost: what arrived of them
    /// moves to `beyond_final`, gaps among them are not loss.
    pub fn finish(&mut self, final_offset: u64) -> Counts {
        if self.last > final_offset {
            let above = |a: u64, b: u64| b.saturating_sub(a.max(final_offset + 1) - 1);
            let missing: u64 = self
                .missing
                .iter()
                .filter(|&&(_, b)| b > final_offset)
                .map(|&(a, b)| above(a, b))
                .sum();
            let own = self
                .own_passed
                .iter()
                .filter(|&&o| o > final_offset)
                .count() as u64;
            let beyond = (self.last - final_offset) - missing - own;
            self.counts.delivered -= beyond;
            self.counts.beyond_final += beyond;
            self.counts.lost -= missing;
            self.missing.retain(|&(a, _)| a <= final_offset);
            for r in &mut self.missing {
                r.1 = r.1.min(final_offset);
            }
        }
        self.counts.lost += self.outstanding(final_offset);
        self.last = self.last.max(final_offset);
        self.skips.clear();
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut t = OffsetTracker::new(10);
        for o in 11..=20 {
            assert_eq!(t.handle_delivery(o), Outcome::InOrder);
        }
        assert_eq!(t.outstanding(20), 0);
        let c = t.finish(20);
        assert_eq!(
            c,
            Counts {
                delivered: 10,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gaps_are_loss_and_tail_is_loss() {
        let mut t = OffsetTracker::new(0);
        t.handle_delivery(1);
        assert_eq!(t.handle_delivery(4), Outcome::Gap(2));
        assert_eq!(t.outstanding(6), 2);
        let c = t.finish(6);
        assert_eq!(
            c,
            Counts {
                delivered: 2,
                lost: 4,
                duplicates: 0,
                reordered: 0,
                ..Default::default()
            }
        );
    }

    #[test]
    fn late_arrival_is_reordered_not_lost() {
        let mut t = OffsetTracker::new(0);
        t.handle_delivery(1);
        t.handle_delivery(3);
        assert_eq!(t.handle_delivery(2), Outcome::Reordered);
        assert_eq!(t.handle_delivery(2), Outcome::Duplicate);
        assert_eq!(t.handle_delivery(3), Outcome::Duplicate);
        let c = t.finish(3);
        assert_eq!(
            c,
            Counts {
                delivered: 3,
                lost: 0,
                duplicates: 2,
                reordered: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn reorder_inside_a_wide_gap_splits_it() {
        let mut t = OffsetTracker::new(0);
        t.handle_delivery(10);
        assert_eq!(t.counts.lost, 9);
        assert_eq!(t.handle_delivery(5), Outcome::Reordered);
        assert_eq!(t.handle_delivery(1), Outcome::Reordered);
        assert_eq!(t.handle_delivery(9), Outcome::Reordered);
        assert_eq!(t.handle_delivery(5), Outcome::Duplicate);
        assert_eq!(t.counts.lost, 6);
    }

    #[test]
    fn own_publications_are_not_gaps() {
        // Own offset known before the deliveries pass it.
        let mut t = OffsetTracker::new(0);
        t.handle_own(2);
        t.handle_delivery(1);
        assert_eq!(t.handle_delivery(3), Outcome::InOrder);
        // Own offset known after the deliveries passed it.
        t.handle_delivery(5);
        assert_eq!(t.counts.lost, 1);
        t.handle_own(4);
        assert_eq!(t.counts.lost, 0);
        // Own offset at the tail.
        t.handle_own(6);
        assert_eq!(t.outstanding(6), 0);
        assert_eq!(t.outstanding(7), 1);
        let c = t.finish(6);
        assert_eq!(
            c,
            Counts {
                delivered: 3,
                ..Default::default()
            }
        );
    }

    #[test]
    fn own_publications_between_gaps() {
        let mut t = OffsetTracker::new(0);
        t.handle_own(3);
        assert_eq!(t.handle_delivery(5), Outcome::Gap(3));
        assert_eq!(t.handle_delivery(2), Outcome::Reordered);
        assert_eq!(t.handle_delivery(3), Outcome::Duplicate);
        assert_eq!(t.counts.lost, 2);
    }

    #[test]
    fn deliveries_past_the_final_are_set_apart_not_counted() {
        // The publisher saw offsets up to 3 acknowledged; 4, 5 and 7 were
        // delivered anyway (sent, acknowledgement never read), 6 not.
        let mut t = OffsetTracker::new(0);
        for o in [1, 2, 4, 5, 7] {
            t.handle_delivery(o);
        }
        let c = t.finish(3);
        assert_eq!(
            c,
            Counts {
                delivered: 2,
                lost: 1,
                beyond_final: 3,
                ..Default::default()
            }
        );
        // Delivered never exceeds expected (the final minus the start).
        assert!(c.delivered + c.lost <= 3);
    }

    #[test]
    fn own_publications_past_the_final_are_not_deliveries() {
        let mut t = OffsetTracker::new(0);
        t.handle_own(3);
        t.handle_delivery(1);
        t.handle_delivery(4);
        t.handle_own(5);
        t.handle_delivery(6);
        let c = t.finish(2);
        assert_eq!(
            c,
            Counts {
                delivered: 1,
                lost: 1,
                beyond_final: 2,
                ..Default::default()
            }
        );
    }
}
