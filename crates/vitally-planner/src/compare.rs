//! The comparison with what was delivered, made row by row while the sync's query
//! runs: which rows may need sending, and which keys repeat.
//!
//! Postgres calls `admit` once per row of the query (through a function of the
//! extension's, see `src/comparison.rs`), with a 64-bit hash of the row's key and the
//! hash of its mapped values. Only admitted rows are made into JSON and written, so an
//! unchanged row of a re-run costs a hash lookup, not a write and a join.
//!
//! Keys are compared by hash. Two keys with one hash (about 1 in 30 million for a
//! million keys) share an entry: then a row is admitted when it need not be (sent
//! again, harmless) or taken for a repeat (checked again by text, see `repeats`).
//! A row is never taken for unchanged unless its 64-bit values hash equals what was
//! delivered for its key, as before this module.
//!
//! A lookup in a table of a million keys is a cache miss, and Postgres's work between
//! two rows leaves nothing to overlap it with: on this project's machines, 0.3 s of a
//! 1%-changed re-run of a million rows. So the keys a pass read, in the order it read
//! them, are kept (`order_to_keep`) and given to the next pass (`expect`): what was
//! delivered is then laid out in that order, and a query that reads its rows in the
//! same order as last time (a sequential scan of a table that changed little) finds
//! each row's delivered hash at the next place, in memory already being read. A row out
//! of that order is looked up in the table as before; the result is the same either way.

/// What was delivered: key hash to values hash, in one array probed linearly, so a
/// lookup touches one place in memory (a general hash map touches two, and a million
/// keys do not fit in a cache: a lookup costs its misses).
#[derive(Default)]
struct Delivered {
    slots: Vec<(i64, i64)>,
    len: usize,
    /// The entry of key hash 0, which marks an empty slot.
    zero: Option<i64>,
}

impl Delivered {
    /// A table of `pairs` (a later pair of one key wins), sized once and filled in slot
    /// order: inserted one by one in the order read, each of a million keys cost a cache
    /// and TLB miss and the table grew ten times (a third of an unchanged re-run).
    /// `check` is called every thousand keys: keys chosen to share slots make the fill
    /// quadratic, and it must stay cancellable (Postgres's interrupts).
    fn build(mut pairs: Vec<(i64, i64)>, check: &mut dyn FnMut()) -> Delivered {
        let size = (pairs.len() * 2).next_power_of_two().max(1024);
        let mut table = Delivered { slots: vec![(0, 0); size], len: 0, zero: None };
        let mask = size - 1;
        // Stable: a later pair of one key stays after the earlier, and overwrites it.
        pairs.sort_by_key(|&(key, _)| key as usize & mask);
        for (i, (key, hash)) in pairs.into_iter().enumerate() {
            if i % 1024 == 0 {
                check();
            }
            table.insert(key, hash);
        }
        table
    }

    fn insert(&mut self, key: i64, hash: i64) {
        if key == 0 {
            self.zero = Some(hash);
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.slots[i].0 {
                0 => {
                    self.slots[i] = (key, hash);
                    self.len += 1;
                    return;
                }
                k if k == key => {
                    self.slots[i].1 = hash;
                    return;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get(&self, key: i64) -> Option<i64> {
        if key == 0 {
            return self.zero;
        }
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = key as usize & mask;
        loop {
            match self.slots[i] {
                (0, _) => return None,
                (k, hash) if k == key => return Some(hash),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![(0, 0); size]);
        self.len = 0;
        for (key, hash) in old.into_iter().filter(|(k, _)| *k != 0) {
            self.insert(key, hash);
        }
    }
}

/// How far ahead of the expected place a row's key is looked for (rows deleted since
/// the last pass), and, for a key delivered but not found there, how far ahead it is
/// searched for before it is taken as out of order (a deleted range).
const LOOKAHEAD: usize = 4;
const SEARCH: usize = 1024;

/// A pass of fewer rows keeps no order: its table fits in a cache anyway. Nor does one
/// of more (160 MB of keys), far from a `bytea`'s limit of 1 GB.
pub const ORDER_MIN_ROWS: i64 = 10_000;
pub const ORDER_MAX_ROWS: i64 = 20_000_000;

/// What was delivered, in the order the last pass read its keys, and where this pass
/// has got to in it.
#[derive(Default)]
struct Ordered {
    /// (key hash, values hash) of the delivered keys, in the last pass's order.
    pairs: Vec<(i64, i64)>,
    next: usize,
    /// Where the order goes on if the last row's key, found far ahead, was not a stray
    /// (a row that moved back into free space): taken up only when the next row agrees.
    further: Option<usize>,
    /// Rows found where expected; rows not (new keys, moved rows).
    found: i64,
    missed: i64,
    /// Given up: most rows are not where expected.
    off: bool,
}

impl Ordered {
    /// What was delivered for `key`: at (or a little after) the expected place, else
    /// from the table, which is asked once.
    fn find(&mut self, key: i64, delivered: &Delivered) -> Option<i64> {
        if self.off {
            return delivered.get(key);
        }
        let near = |from: usize| self.pairs[from..].iter().take(LOOKAHEAD).position(|&(k, _)| k == key).map(|j| from + j);
        if let Some(i) = near(self.next).or_else(|| self.further.and_then(near)) {
            self.next = i + 1;
            self.further = None;
            self.found += 1;
            return Some(self.pairs[i].1);
        }
        self.further = None;
        let hash = delivered.get(key);
        // Delivered, but not just ahead: after a range of deleted rows it is further on
        // (the order goes on from there if the next row agrees); a moved row's is behind.
        if hash.is_some() {
            let from = self.next + LOOKAHEAD;
            if let Some(j) = self.pairs.get(from..).unwrap_or_default().iter().take(SEARCH - LOOKAHEAD).position(|&(k, _)| k == key) {
                self.further = Some(from + j + 1);
                self.found += 1;
                return hash;
            }
        }
        self.missed += 1;
        // Mostly out of order (another plan, a shuffled table): the table alone.
        self.off = self.missed > 5_000 && self.missed > self.found;
        hash
    }
}

/// What a row is compared with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Against {
    /// Nothing (a first run, `full_resync`, a preview): every row is admitted.
    Nothing,
    /// The hash of what was delivered per key: a row whose values hash differs (or whose
    /// key was never delivered) is admitted.
    Values,
    /// Only whether a key was delivered (events: each is sent once, ever).
    Keys,
}

/// What a pass admits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pass {
    /// The first: rows that changed.
    Changes,
    /// The second, only when keys repeated: every row of those keys.
    Repeats,
}

/// One planning pass's comparison.
pub struct Comparison {
    against: Against,
    delivered: Delivered,
    /// What was delivered, as read, until the first row is compared.
    read: Vec<(i64, i64)>,
    /// The key hash of every row of the first pass, to find repeats, and of those
    /// admitted (when not all are).
    keys: Vec<i64>,
    changed: Vec<i64>,
    repeated: Vec<i64>,
    pass: Pass,
    rows: i64,
    /// The keys the last pass read, in its order (until the table is built).
    expected: Vec<i64>,
    ordered: Ordered,
    /// Whether this pass's order may be kept (a run of every row, not a preview or the
    /// re-plan of a few keys), and the keys in that order, when worth keeping.
    keeps: bool,
    kept: Option<Vec<i64>>,
}

impl Comparison {
    pub fn new(against: Against) -> Comparison {
        Comparison {
            against,
            delivered: Delivered::default(),
            read: Vec::new(),
            keys: Vec::new(),
            changed: Vec::new(),
            repeated: Vec::new(),
            pass: Pass::Changes,
            rows: 0,
            expected: Vec::new(),
            ordered: Ordered::default(),
            keeps: false,
            kept: None,
        }
    }

    /// What was delivered for a key.
    pub fn delivered(&mut self, key: i64, hash: i64) {
        self.read.push((key, hash));
    }

    /// The keys the last pass read, in its order (before `loaded`).
    pub fn expect(&mut self, keys: Vec<i64>) {
        self.expected = keys;
    }

    /// This pass reads every row of the sync: its order may be kept for the next.
    pub fn keeps_order(&mut self) {
        self.keeps = true;
    }

    /// Ends the reading of what was delivered: its table is built (else at the first
    /// row compared), calling `check` now and then; and laid out in the order expected,
    /// if one was given (lookups of keys one after another, which the processor
    /// overlaps: a few hundredths of a second for a million).
    pub fn loaded(&mut self, check: &mut dyn FnMut()) {
        if !self.read.is_empty() {
            let read = std::mem::take(&mut self.read);
            if self.delivered.len == 0 && self.delivered.zero.is_none() {
                self.delivered = Delivered::build(read, check);
            } else {
                // Given after rows were compared (only tests do): one by one.
                read.into_iter().for_each(|(key, hash)| self.delivered.insert(key, hash));
            }
        }
        if !self.expected.is_empty() {
            let expected = std::mem::take(&mut self.expected);
            let mut pairs = Vec::with_capacity(expected.len());
            for (i, key) in expected.into_iter().enumerate() {
                // Cancellable, as the build is (keys chosen to share slots make it slow).
                if i % 1024 == 0 {
                    check();
                }
                if let Some(hash) = self.delivered.get(key) {
                    pairs.push((key, hash));
                }
            }
            self.ordered.pairs = pairs;
        }
    }

    /// Rows found where the last pass's order put them, and rows not.
    pub fn in_order(&self) -> (i64, i64) {
        (self.ordered.found, self.ordered.missed)
    }

    /// Whether the row with this key hash (`None`: the key is NULL) and values hash is
    /// written. A row whose key is NULL always is: it becomes an invalid record.
    pub fn admit(&mut self, key: Option<i64>, hash: i64) -> bool {
        match self.pass {
            Pass::Repeats => key.is_some_and(|k| self.repeated.binary_search(&k).is_ok()),
            Pass::Changes => {
                self.rows += 1;
                self.loaded(&mut || {});
                let Some(key) = key else { return true };
                self.keys.push(key);
                let admitted = match self.against {
                    Against::Nothing => true,
                    Against::Values => self.ordered.find(key, &self.delivered) != Some(hash),
                    Against::Keys => self.ordered.find(key, &self.delivered).is_none(),
                };
                if admitted && self.against != Against::Nothing {
                    self.changed.push(key);
                }
                admitted
            }
        }
    }

    /// The keys of the first pass in the order it read them, for the next pass's
    /// `expect`, if worth keeping (after `repeats`; once).
    pub fn order_to_keep(&mut self) -> Option<Vec<i64>> {
        self.kept.take()
    }

    /// How many rows the first pass saw.
    pub fn rows(&self) -> i64 {
        self.rows
    }

    /// Ends the first pass: the hashes of keys seen more than once with a row that
    /// changed, sorted (a repeat identical to what was delivered sends nothing, as it
    /// would alone). When there are any, a second pass writes every row of those keys
    /// (the first wrote only the changed ones, and a repeated key's rows are all
    /// invalid), after the caller has removed the rows the first wrote for them.
    pub fn repeats(&mut self) -> &[i64] {
        let mut keys = std::mem::take(&mut self.keys);
        // Kept when the order given was missing or no longer fits (under 95% of the rows
        // found where expected): rewriting it after every pass would cost a write of
        // 8 bytes a row to a run that may have nothing to queue.
        if self.keeps
            && (ORDER_MIN_ROWS..=ORDER_MAX_ROWS).contains(&self.rows)
            && self.ordered.found.saturating_mul(20) < self.rows.saturating_mul(19)
        {
            self.kept = Some(keys.clone());
        }
        keys.sort_unstable();
        let mut repeated: Vec<i64> = keys.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0]).collect();
        repeated.dedup();
        if self.against != Against::Nothing {
            let mut changed = std::mem::take(&mut self.changed);
            changed.sort_unstable();
            repeated.retain(|k| changed.binary_search(k).is_ok());
        }
        self.delivered = Delivered::default();
        self.ordered = Ordered::default();
        self.repeated = repeated;
        self.pass = Pass::Repeats;
        &self.repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_admitted_when_their_values_changed_or_their_key_is_new() {
        let mut c = Comparison::new(Against::Values);
        c.delivered(1, 10);
        c.delivered(2, 20);
        assert!(!c.admit(Some(1), 10), "unchanged");
        assert!(c.admit(Some(2), 21), "changed");
        assert!(c.admit(Some(3), 30), "new");
        assert!(c.admit(None, 40), "a NULL key becomes an invalid record");
        c.delivered(0, 5);
        assert!(!c.admit(Some(0), 5), "key hash 0 is a key like any other");
        assert_eq!(c.rows(), 5);
        assert!(c.repeats().is_empty());
    }

    #[test]
    fn many_keys_are_found_again_after_the_table_grows() {
        let mut c = Comparison::new(Against::Values);
        let key = |i: i64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64);
        (0..5000).for_each(|i| c.delivered(key(i), i));
        assert!((0..5000).all(|i| !c.admit(Some(key(i)), i)));
        assert!((5000..6000).all(|i| c.admit(Some(key(i)), i)));
    }

    #[test]
    fn a_key_delivered_twice_counts_with_its_later_hash() {
        let mut c = Comparison::new(Against::Values);
        // Keys that share a slot, and one given twice: the later of its hashes is kept.
        (0..3000i64).for_each(|i| c.delivered(i << 20, i));
        c.delivered(5 << 20, 55);
        c.delivered(0, 1);
        assert!(!c.admit(Some(5 << 20), 55));
        assert!(c.admit(Some(5 << 20), 5), "the earlier hash of key 5 is forgotten");
        assert!(!c.admit(Some(0), 1), "key 0, given twice, also keeps its later hash");
        assert!((1..3000).filter(|&i| i != 5).all(|i| !c.admit(Some(i << 20), i)));
    }

    #[test]
    fn events_are_admitted_once_ever_whatever_their_values() {
        let mut c = Comparison::new(Against::Keys);
        c.delivered(1, 10);
        assert!(!c.admit(Some(1), 11));
        assert!(c.admit(Some(2), 10));
    }

    #[test]
    fn without_a_comparison_every_row_is_admitted() {
        let mut c = Comparison::new(Against::Nothing);
        c.delivered(1, 10);
        assert!(c.admit(Some(1), 10));
    }

    #[test]
    fn a_repeated_key_with_a_changed_row_has_all_its_rows_admitted_again() {
        let mut c = Comparison::new(Against::Values);
        c.delivered(7, 70);
        c.delivered(9, 90);
        assert!(!c.admit(Some(7), 70));
        assert!(!c.admit(Some(7), 70), "an identical repeat of what was delivered sends nothing");
        assert!(!c.admit(Some(9), 90));
        assert!(c.admit(Some(9), 91));
        assert!(c.admit(Some(8), 80));
        assert!(c.admit(Some(5), 1));
        assert!(c.admit(Some(5), 2));
        assert!(c.admit(Some(5), 3));
        assert_eq!(c.repeats(), &[5, 9]);
        // The second pass: every row of 5 and 9, nothing else, and rows are not counted again.
        assert!(c.admit(Some(9), 90));
        assert!(c.admit(Some(5), 1));
        assert!(!c.admit(Some(7), 70));
        assert!(!c.admit(Some(8), 80));
        assert!(!c.admit(None, 0));
        assert_eq!(c.rows(), 8);
    }

    #[test]
    fn without_a_comparison_every_repeat_counts() {
        let mut c = Comparison::new(Against::Nothing);
        assert!(c.admit(Some(7), 70));
        assert!(c.admit(Some(7), 70));
        assert_eq!(c.repeats(), &[7]);
    }

    /// Admits `rows` (key, hash) in turn, returning which were admitted.
    fn admitted(c: &mut Comparison, rows: &[(i64, i64)]) -> Vec<bool> {
        rows.iter().map(|&(k, h)| c.admit(Some(k), h)).collect()
    }

    fn key(i: i64) -> i64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64) | 1
    }

    /// A pass over 20,000 delivered keys, then the next pass with the first's order.
    fn second_pass(rows: &[(i64, i64)]) -> (Vec<bool>, Vec<bool>, (i64, i64)) {
        let delivered: Vec<(i64, i64)> = (0..20_000).map(|i| (key(i), i)).collect();
        let mut first = Comparison::new(Against::Values);
        first.keeps_order();
        delivered.iter().rev().for_each(|&(k, h)| first.delivered(k, h));
        assert!(admitted(&mut first, &delivered).iter().all(|a| !a));
        first.repeats();
        let order = first.order_to_keep().expect("a first pass with no order given keeps its own");
        assert_eq!(order, delivered.iter().map(|&(k, _)| k).collect::<Vec<_>>());
        let mut plain = Comparison::new(Against::Values);
        let mut ordered = Comparison::new(Against::Values);
        for c in [&mut plain, &mut ordered] {
            delivered.iter().rev().for_each(|&(k, h)| c.delivered(k, h));
        }
        ordered.expect(order);
        (admitted(&mut plain, rows), admitted(&mut ordered, rows), ordered.in_order())
    }

    #[test]
    fn a_pass_in_the_last_ones_order_finds_every_key_where_expected() {
        let rows: Vec<(i64, i64)> = (0..20_000).map(|i| (key(i), if i % 100 == 0 { -i - 1 } else { i })).collect();
        let (plain, ordered, (found, missed)) = second_pass(&rows);
        assert_eq!(plain, ordered);
        assert_eq!(plain.iter().filter(|&&a| a).count(), 200, "the changed rows, and only those");
        assert_eq!((found, missed), (20_000, 0), "no lookup in the table");
    }

    #[test]
    fn deleted_moved_and_new_rows_leave_the_rest_in_order_and_the_result_unchanged() {
        // Rows 10..20 and 5000..5600 deleted, every 97th moved to the end, 300 new ones
        // in the middle, every 50th changed.
        let mut rows: Vec<(i64, i64)> = (0..20_000)
            .filter(|i| !(10..20).contains(i) && !(5000..5600).contains(i) && i % 97 != 0)
            .map(|i| (key(i), if i % 50 == 0 { -i } else { i }))
            .collect();
        rows.splice(9000..9000, (0..300).map(|i| (key(100_000 + i), i)));
        rows.extend((0..20_000).filter(|i| i % 97 == 0).map(|i| (key(i), i)));
        let (plain, ordered, (found, missed)) = second_pass(&rows);
        assert_eq!(plain, ordered);
        let moved = (0..20_000).filter(|i| i % 97 == 0).count() as i64;
        assert_eq!(missed, 300 + moved, "only the new and the moved rows are looked up in the table");
        assert_eq!(found, rows.len() as i64 - missed);
    }

    #[test]
    fn a_shuffled_pass_gives_the_order_up_and_the_same_result() {
        // Every row out of order: a stride through the keys.
        let rows: Vec<(i64, i64)> = (0..20_000).map(|i| (i * 7919) % 20_000).map(|i| (key(i), if i % 3 == 0 { -i } else { i })).collect();
        let (plain, ordered, (found, missed)) = second_pass(&rows);
        assert_eq!(plain, ordered);
        assert!(missed > found && missed <= 5_001, "given up after 5,000 rows out of order: {found} found, {missed} missed");
    }

    #[test]
    fn a_row_read_far_too_early_does_not_drag_the_order_along() {
        // Every 500th row read 300 places early (an update that put it in free space
        // further back in its table): found far ahead, and the order goes on from where
        // the next row is, not from there.
        let mut ids: Vec<i64> = (0..20_000).filter(|i| i % 500 != 499).collect();
        for moved in (0..20_000).filter(|i| i % 500 == 499).rev() {
            let at = ids.iter().position(|&i| i == moved - 300).unwrap();
            ids.insert(at, moved);
        }
        let rows: Vec<(i64, i64)> = ids.iter().map(|&i| (key(i), i)).collect();
        let (plain, ordered, (found, missed)) = second_pass(&rows);
        assert_eq!(plain, ordered);
        assert_eq!((found, missed), (20_000, 0), "each row found where expected or just ahead");
    }

    #[test]
    fn an_order_that_still_fits_is_not_written_again_and_a_small_pass_keeps_none() {
        let rows: Vec<(i64, i64)> = (0..20_000).map(|i| (key(i), i)).collect();
        let mut c = Comparison::new(Against::Values);
        c.keeps_order();
        rows.iter().for_each(|&(k, h)| c.delivered(k, h));
        c.expect(rows.iter().map(|&(k, _)| k).collect());
        admitted(&mut c, &rows);
        c.repeats();
        assert_eq!(c.order_to_keep(), None);
        let mut preview = Comparison::new(Against::Nothing);
        admitted(&mut preview, &rows);
        preview.repeats();
        assert_eq!(preview.order_to_keep(), None, "only a pass told it reads every row keeps its order");
        let mut small = Comparison::new(Against::Nothing);
        small.keeps_order();
        admitted(&mut small, &rows[..100]);
        small.repeats();
        assert_eq!(small.order_to_keep(), None);
    }

    #[test]
    fn events_in_order_are_admitted_once_ever() {
        let rows: Vec<(i64, i64)> = (0..20_000).map(|i| (key(i), i)).collect();
        let mut c = Comparison::new(Against::Keys);
        rows[..15_000].iter().for_each(|&(k, h)| c.delivered(k, h));
        c.expect(rows.iter().map(|&(k, _)| k).collect());
        let admitted = admitted(&mut c, &rows.iter().map(|&(k, h)| (k, h + 1)).collect::<Vec<_>>());
        assert!(admitted[..15_000].iter().all(|a| !a) && admitted[15_000..].iter().all(|&a| a));
        assert_eq!(c.in_order(), (15_000, 5_000));
    }
}
