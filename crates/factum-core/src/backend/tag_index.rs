//! The index that answers DCB queries without reading the log: tag → positions and event type
//! → positions (events of user streams only), and the positions of the store's own records.
//! The in-memory store and the embedded engine keep one; it is derived from the log.

use std::collections::HashMap;

use crate::{Direction, Query, QueryItem, StoreError};

/// Increasing positions: as runs of consecutive positions while the runs are long (an event
/// type that most events have), and otherwise in 4 bytes each — the low 32 bits of every
/// position, and where the high 32 bits change (once per 2^32 positions of the log).
#[derive(Clone, Debug)]
enum Postings {
    Runs {
        /// (first position of a run, its index in the list), increasing.
        runs: Vec<(u64, u64)>,
        len: u64,
    },
    Packed {
        low: Vec<u32>,
        /// (high 32 bits, index in `low` of the first position that has them), increasing.
        highs: Vec<(u32, usize)>,
    },
}

impl Default for Postings {
    fn default() -> Self {
        Postings::Runs {
            runs: Vec::new(),
            len: 0,
        }
    }
}

/// The same positions, however they are held.
impl PartialEq for Postings {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Postings {}

/// Runs are kept while there are at most this many per position held (on average 4 or more
/// positions a run), or while there are few of them.
const RUNS_KEPT_MIN: usize = 16;

impl Postings {
    fn len(&self) -> usize {
        match self {
            Postings::Runs { len, .. } => *len as usize,
            Postings::Packed { low, .. } => low.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position at index `i` (< `len`).
    fn get(&self, i: usize) -> u64 {
        match self {
            Postings::Runs { runs, .. } => {
                let at = runs.partition_point(|(_, index)| *index <= i as u64);
                runs.get(at.saturating_sub(1))
                    .map_or(0, |(start, index)| start + (i as u64 - index))
            }
            Postings::Packed { low, highs } => {
                let high = match highs.as_slice() {
                    [(high, _)] => *high,
                    highs => {
                        let at = highs.partition_point(|(_, start)| *start <= i);
                        highs.get(at.saturating_sub(1)).map_or(0, |(high, _)| *high)
                    }
                };
                (u64::from(high) << 32) | u64::from(low.get(i).copied().unwrap_or_default())
            }
        }
    }

    /// Adds a position larger than every one held.
    fn push(&mut self, position: u64) {
        match self {
            Postings::Runs { runs, len } => {
                let continues = runs
                    .last()
                    .is_some_and(|(start, index)| start + (*len - index) == position);
                if !continues {
                    runs.push((position, *len));
                }
                *len += 1;
                if runs.len() > RUNS_KEPT_MIN && runs.len() * 4 > *len as usize {
                    let mut packed = Postings::Packed {
                        low: Vec::with_capacity(*len as usize * 2),
                        highs: Vec::new(),
                    };
                    for p in self.iter() {
                        packed.push(p);
                    }
                    *self = packed;
                }
            }
            Postings::Packed { low, highs } => {
                let high = (position >> 32) as u32;
                if highs.last().is_none_or(|(last, _)| *last != high) {
                    highs.push((high, low.len()));
                }
                low.push(position as u32);
            }
        }
    }

    /// The index of the first position at or above `position`.
    fn partition_point(&self, position: u64) -> usize {
        if let Postings::Runs { runs, len } = self {
            let at = runs.partition_point(|(start, _)| *start <= position);
            let Some(&(start, index)) = at.checked_sub(1).and_then(|r| runs.get(r)) else {
                return 0;
            };
            let end = runs.get(at).map_or(*len, |(_, next)| *next);
            return (index + (position - start).min(end - index)) as usize;
        }
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.get(mid) < position {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn contains(&self, position: u64) -> bool {
        let i = self.partition_point(position);
        i < self.len() && self.get(i) == position
    }

    /// Keeps the first `n` positions.
    fn truncate(&mut self, n: usize) {
        match self {
            Postings::Runs { runs, len } => {
                runs.retain(|(_, index)| *index < n as u64);
                *len = (*len).min(n as u64);
            }
            Postings::Packed { low, highs } => {
                low.truncate(n);
                highs.retain(|(_, start)| *start < n);
            }
        }
    }

    /// The positions in `from..to`, in `direction`.
    fn range(&self, from: u64, to: u64, direction: Direction) -> impl Iterator<Item = u64> + '_ {
        let (start, end) = (self.partition_point(from), self.partition_point(to));
        let indexes: Box<dyn Iterator<Item = usize>> = match direction {
            Direction::Forwards => Box::new(start..end),
            Direction::Backwards => Box::new((start..end).rev()),
        };
        indexes.map(move |i| self.get(i))
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Postings::Runs { runs, .. } => runs.shrink_to_fit(),
            Postings::Packed { low, highs } => {
                low.shrink_to_fit();
                highs.shrink_to_fit();
            }
        }
    }
}

/// Positions by tag and by event type, each list in increasing order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagIndex {
    tags: HashMap<String, Postings>,
    types: HashMap<String, Postings>,
    /// Positions of records of system streams (`$…`), which no query matches.
    system: Vec<u64>,
    /// The position after the last one added.
    next: u64,
}

impl TagIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// The position after the last one added (0 when empty).
    pub fn next_position(&self) -> u64 {
        self.next
    }

    /// Adds the record at `position`, which must follow the last one added; `system` when
    /// its stream is a system stream.
    pub fn add(
        &mut self,
        position: u64,
        system: bool,
        event_type: &str,
        tags: &[String],
    ) -> Result<(), StoreError> {
        if position < self.next {
            return Err(StoreError::invalid(format!(
                "tag index: position {position} added after {}",
                self.next
            )));
        }
        self.next = position + 1;
        if system {
            self.system.push(position);
            return Ok(());
        }
        push(&mut self.types, event_type, position);
        for tag in tags {
            push(&mut self.tags, tag, position);
        }
        Ok(())
    }

    /// Moves past positions that hold no record (scavenging removed them): the next position
    /// added may be `next` or later.
    pub fn advance(&mut self, next: u64) {
        self.next = self.next.max(next);
    }

    /// Forgets the positions `gone` (sorted, ascending): scavenging removed their events. Every
    /// list that holds one is built again without them.
    pub fn remove(&mut self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        // Both lists are sorted: one walk of each tells what stays.
        fn kept(list: impl Iterator<Item = u64>, gone: &[u64]) -> (Vec<u64>, bool) {
            let mut kept = Vec::new();
            let mut removed = false;
            let mut g = 0;
            for p in list {
                while gone.get(g).is_some_and(|x| *x < p) {
                    g += 1;
                }
                if gone.get(g) == Some(&p) {
                    removed = true;
                } else {
                    kept.push(p);
                }
            }
            (kept, removed)
        }
        for lists in [&mut self.tags, &mut self.types] {
            lists.retain(|_, list| {
                let (positions, removed) = kept(list.iter(), gone);
                if removed {
                    let mut rebuilt = Postings::default();
                    positions.into_iter().for_each(|p| rebuilt.push(p));
                    rebuilt.shrink_to_fit();
                    *list = rebuilt;
                }
                !list.is_empty()
            });
        }
        self.system = kept(self.system.iter().copied(), gone).0;
    }

    /// Gives back the room the lists grew into (after a replay of the log).
    pub fn shrink_to_fit(&mut self) {
        for lists in [&mut self.tags, &mut self.types] {
            lists.values_mut().for_each(Postings::shrink_to_fit);
            lists.shrink_to_fit();
        }
        self.system.shrink_to_fit();
    }

    /// Forgets every position at or above `position` (a write that was planned but failed).
    pub fn truncate(&mut self, position: u64) {
        if position >= self.next {
            return;
        }
        for lists in [&mut self.tags, &mut self.types] {
            lists.retain(|_, list| {
                list.truncate(list.partition_point(position));
                !list.is_empty()
            });
        }
        self.system
            .truncate(self.system.partition_point(|p| *p < position));
        self.next = position;
    }

    /// Positions of events matching `query` after `after` (all, without it) and below `to`,
    /// in `direction` (backwards: the newest first), at most `limit`.
    pub fn query(
        &self,
        query: &Query,
        after: Option<u64>,
        to: u64,
        direction: Direction,
        limit: usize,
    ) -> Vec<u64> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        let to = to.min(self.next);
        if from >= to || limit == 0 {
            return Vec::new();
        }
        if query.items.is_empty() {
            return self.item(&QueryItem::default(), from, to, direction, limit);
        }
        let mut found: Vec<u64> = Vec::new();
        for item in &query.items {
            found.extend(self.item(item, from, to, direction, limit));
        }
        found.sort_unstable();
        found.dedup();
        if direction == Direction::Backwards {
            found.reverse();
        }
        found.truncate(limit);
        found
    }

    /// The first position after `after` and below `to` that matches `query`.
    pub fn first_match(&self, query: &Query, after: Option<u64>, to: u64) -> Option<u64> {
        self.query(query, after, to, Direction::Forwards, 1)
            .first()
            .copied()
    }

    /// Positions in `from..to` matching one item, in `direction`, at most `limit`.
    fn item(
        &self,
        item: &QueryItem,
        from: u64,
        to: u64,
        direction: Direction,
        limit: usize,
    ) -> Vec<u64> {
        let mut found = Vec::new();
        if !item.tags.is_empty() {
            // Walk the shortest tag's list; check the other tags and the type by search.
            let mut lists: Vec<&Postings> = Vec::with_capacity(item.tags.len());
            for tag in &item.tags {
                match self.tags.get(tag) {
                    Some(list) => lists.push(list),
                    None => return found,
                }
            }
            lists.sort_by_key(|l| l.len());
            let Some((shortest, others)) = lists.split_first() else {
                return found;
            };
            let types: Vec<&Postings> = item
                .types
                .iter()
                .filter_map(|t| self.types.get(t))
                .collect();
            if !item.types.is_empty() && types.is_empty() {
                return found;
            }
            for p in shortest.range(from, to, direction) {
                if others.iter().all(|l| l.contains(p))
                    && (item.types.is_empty() || types.iter().any(|l| l.contains(p)))
                {
                    found.push(p);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            return found;
        }
        if !item.types.is_empty() {
            // An event has one type: the lists are disjoint.
            for event_type in &item.types {
                if let Some(list) = self.types.get(event_type) {
                    found.extend(list.range(from, to, direction).take(limit));
                }
            }
            found.sort_unstable();
            if direction == Direction::Backwards {
                found.reverse();
            }
            found.truncate(limit);
            return found;
        }
        // Every event of a user stream: the range without the system records.
        let system = &self.system;
        match direction {
            Direction::Forwards => {
                let mut s = system.partition_point(|p| *p < from);
                for p in from..to {
                    while system.get(s).is_some_and(|q| *q < p) {
                        s += 1;
                    }
                    if system.get(s) == Some(&p) {
                        continue;
                    }
                    found.push(p);
                    if found.len() == limit {
                        break;
                    }
                }
            }
            Direction::Backwards => {
                let mut s = system.partition_point(|p| *p < to);
                for p in (from..to).rev() {
                    while s > 0 && system.get(s - 1).is_some_and(|q| *q > p) {
                        s -= 1;
                    }
                    if s > 0 && system.get(s - 1) == Some(&p) {
                        continue;
                    }
                    found.push(p);
                    if found.len() == limit {
                        break;
                    }
                }
            }
        }
        found
    }

    /// The index as bytes, for a saved index file: read back by [`TagIndex::decode`].
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.next.to_le_bytes());
        for lists in [&self.tags, &self.types] {
            let mut names: Vec<&String> = lists.keys().collect();
            names.sort();
            out.extend_from_slice(&(names.len() as u64).to_le_bytes());
            for name in names {
                let Some(list) = lists.get(name) else {
                    continue;
                };
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
                encode_positions(list.len(), list.iter(), out);
            }
        }
        encode_positions(self.system.len(), self.system.iter().copied(), out);
    }

    /// Reads what [`TagIndex::encode`] wrote from the start of `bytes`; returns the index and
    /// how many bytes it took, or `None` when the bytes do not hold one.
    pub fn decode(bytes: &[u8]) -> Option<(TagIndex, usize)> {
        let mut at = 0usize;
        let next = u64_at(bytes, &mut at)?;
        let mut maps = Vec::with_capacity(2);
        for _ in 0..2 {
            let count = u64_at(bytes, &mut at)?;
            if count > bytes.len() as u64 {
                return None;
            }
            let mut map = HashMap::with_capacity(count as usize);
            for _ in 0..count {
                let len = u32_at(bytes, &mut at)? as usize;
                let name = bytes.get(at..at.checked_add(len)?)?;
                at += len;
                let name = std::str::from_utf8(name).ok()?.to_owned();
                let mut list = Postings::default();
                decode_positions(bytes, &mut at, next, |p| list.push(p))?;
                list.shrink_to_fit();
                map.insert(name, list);
            }
            maps.push(map);
        }
        let mut system = Vec::new();
        decode_positions(bytes, &mut at, next, |p| system.push(p))?;
        let types = maps.pop()?;
        let tags = maps.pop()?;
        Some((
            TagIndex {
                tags,
                types,
                system,
                next,
            },
            at,
        ))
    }
}

fn push(lists: &mut HashMap<String, Postings>, key: &str, position: u64) {
    match lists.get_mut(key) {
        Some(list) => list.push(position),
        None => {
            let mut list = Postings::default();
            list.push(position);
            lists.insert(key.to_owned(), list);
        }
    }
}

/// A sorted list as a count and the gaps between its positions (LEB128).
fn encode_positions(len: usize, list: impl Iterator<Item = u64>, out: &mut Vec<u8>) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
    let mut last = 0u64;
    for (i, p) in list.enumerate() {
        let mut gap = if i == 0 { p } else { p - last };
        last = p;
        loop {
            let byte = (gap & 0x7f) as u8;
            gap >>= 7;
            if gap == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
}

/// Reads [`encode_positions`], handing each position to `push`; `None` unless the positions
/// increase and stay below `next`.
fn decode_positions(
    bytes: &[u8],
    at: &mut usize,
    next: u64,
    mut push: impl FnMut(u64),
) -> Option<()> {
    let count = u64_at(bytes, at)?;
    if count > bytes.len().saturating_sub(*at) as u64 {
        return None;
    }
    let mut last = 0u64;
    for i in 0..count {
        let mut gap = 0u64;
        let mut shift = 0u32;
        loop {
            let byte = *bytes.get(*at)?;
            *at += 1;
            if shift > 63 {
                return None;
            }
            gap |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let p = if i == 0 {
            gap
        } else {
            if gap == 0 {
                return None;
            }
            last.checked_add(gap)?
        };
        if p >= next {
            return None;
        }
        push(p);
        last = p;
    }
    Some(())
}

fn u64_at(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let b = bytes.get(*at..*at + 8)?;
    *at += 8;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let b = bytes.get(*at..*at + 4)?;
    *at += 4;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use proptest::prelude::*;

    use super::*;
    use crate::StreamName;

    /// An event of the model: its stream is a system one when `system`.
    #[derive(Clone, Debug)]
    struct Ev {
        system: bool,
        event_type: String,
        tags: Vec<String>,
    }

    fn event() -> impl Strategy<Value = Ev> {
        (
            prop::bool::weighted(0.1),
            prop::sample::select(vec!["A", "B", "C"]),
            prop::sample::subsequence(vec!["t1", "t2", "t3", "t4"], 0..=3),
        )
            .prop_map(|(system, t, tags)| Ev {
                system,
                event_type: t.to_owned(),
                tags: tags.into_iter().map(str::to_owned).collect(),
            })
    }

    fn item() -> impl Strategy<Value = QueryItem> {
        (
            prop::sample::subsequence(vec!["A", "B", "C", "D"], 0..=2),
            prop::sample::subsequence(vec!["t1", "t2", "t3", "t5"], 0..=2),
        )
            .prop_map(|(types, tags)| QueryItem::new(types, tags))
    }

    proptest! {
        /// The index answers as a scan of the events would, in both directions, with
        /// limits and ranges, and after a save and a load.
        #[test]
        fn the_index_answers_as_a_scan_would(
            events in prop::collection::vec(event(), 0..60),
            items in prop::collection::vec(item(), 0..3),
            after in prop::option::of(0u64..70),
            to in 0u64..70,
            limit in 1usize..80,
            backwards in any::<bool>(),
        ) {
            let user = StreamName::new("s").unwrap();
            let system = StreamName::new("$s").unwrap();
            let mut index = TagIndex::new();
            for (p, e) in events.iter().enumerate() {
                let stream = if e.system { &system } else { &user };
                index.add(p as u64, stream.is_system(), &e.event_type, &e.tags).unwrap();
            }
            let query = Query { items };
            let direction = if backwards { Direction::Backwards } else { Direction::Forwards };
            let mut expected: Vec<u64> = events
                .iter()
                .enumerate()
                .filter(|(p, e)| {
                    let p = *p as u64;
                    let stream = if e.system { &system } else { &user };
                    after.is_none_or(|a| p > a)
                        && p < to
                        && query.matches(stream, &e.event_type, &e.tags)
                })
                .map(|(p, _)| p as u64)
                .collect();
            if backwards {
                expected.reverse();
            }
            expected.truncate(limit);
            prop_assert_eq!(&index.query(&query, after, to, direction, limit), &expected);
            let mut bytes = Vec::new();
            index.encode(&mut bytes);
            let (loaded, used) = TagIndex::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(&loaded, &index);
            // Cut back and added again: the same index.
            let cut = (events.len() / 2) as u64;
            let mut again = index.clone();
            again.truncate(cut);
            for (p, e) in events.iter().enumerate().skip(cut as usize) {
                let stream = if e.system { &system } else { &user };
                again.add(p as u64, stream.is_system(), &e.event_type, &e.tags).unwrap();
            }
            prop_assert_eq!(&again, &index);
            // Positions removed (scavenged): the same as an index that never had them.
            let gone: Vec<u64> = (0..events.len() as u64).filter(|p| p % 3 == to % 3).collect();
            let mut removed = index.clone();
            removed.remove(&gone);
            let mut without = TagIndex::new();
            for (p, e) in events.iter().enumerate() {
                if gone.contains(&(p as u64)) {
                    continue;
                }
                let stream = if e.system { &system } else { &user };
                without.add(p as u64, stream.is_system(), &e.event_type, &e.tags).unwrap();
            }
            without.advance(events.len() as u64);
            prop_assert_eq!(&removed, &without);
        }
    }

    #[test]
    fn postings_are_runs_while_runs_are_long_and_packed_otherwise() {
        let mut dense = Postings::default();
        for p in (10..10_000).chain(20_000..30_000) {
            dense.push(p);
        }
        assert!(matches!(&dense, Postings::Runs { runs, .. } if runs.len() == 2));
        assert_eq!(dense.len(), 19_990);
        assert_eq!(dense.partition_point(0), 0);
        assert_eq!(dense.partition_point(10_000), 9_990);
        assert_eq!(dense.partition_point(15_000), 9_990);
        assert_eq!(dense.partition_point(20_001), 9_991);
        assert_eq!(dense.partition_point(40_000), 19_990);
        assert!(dense.contains(29_999) && !dense.contains(10_000));
        assert_eq!(
            dense
                .range(9_998, 20_002, Direction::Forwards)
                .collect::<Vec<_>>(),
            [9_998, 9_999, 20_000, 20_001]
        );
        let mut sparse = Postings::default();
        for p in (0..200).map(|n| n * 3) {
            sparse.push(p);
        }
        assert!(matches!(sparse, Postings::Packed { .. }));
        assert_eq!(
            sparse.iter().collect::<Vec<_>>(),
            (0..200).map(|n| n * 3).collect::<Vec<_>>()
        );
        assert_eq!(sparse.partition_point(298), 100);
        assert!(sparse.contains(597) && !sparse.contains(598));
        let mut cut = dense.clone();
        cut.truncate(9_991);
        assert_eq!(cut.iter().last(), Some(20_000));
        assert_eq!(cut.len(), 9_991);
    }

    #[test]
    fn postings_hold_positions_past_four_billion() {
        let big = 1u64 << 32;
        let positions = [3, big - 2, big - 1, big, big + 5, 2 * big + 1, 3 * big];
        let mut list = Postings::default();
        for p in positions {
            list.push(p);
        }
        assert_eq!(list.iter().collect::<Vec<_>>(), positions);
        for (i, p) in positions.iter().enumerate() {
            assert_eq!(list.get(i), *p);
            assert!(list.contains(*p));
            assert!(!list.contains(p + 1) || positions.contains(&(p + 1)));
            assert_eq!(list.partition_point(*p), i);
        }
        assert_eq!(
            list.range(big - 1, 2 * big + 2, Direction::Backwards)
                .collect::<Vec<_>>(),
            [2 * big + 1, big + 5, big, big - 1]
        );
        list.truncate(4);
        assert_eq!(list.iter().collect::<Vec<_>>(), &positions[..4]);
        list.push(big + 9);
        assert_eq!(list.iter().last(), Some(big + 9));
        // Through the index, a save and a load.
        let mut index = TagIndex::new();
        for p in positions {
            index.add(p, false, "T", &["a".to_owned()]).unwrap();
        }
        let mut bytes = Vec::new();
        index.encode(&mut bytes);
        let (loaded, _) = TagIndex::decode(&bytes).unwrap();
        assert_eq!(loaded, index);
        let q = Query::item(["T"], ["a"]);
        assert_eq!(
            loaded.query(&q, Some(big - 1), u64::MAX, Direction::Forwards, 10),
            [big, big + 5, 2 * big + 1, 3 * big]
        );
    }

    #[test]
    fn damaged_bytes_do_not_decode() {
        let mut index = TagIndex::new();
        for p in 0..10 {
            index.add(p, false, "T", &["a".to_owned()]).unwrap();
        }
        let mut bytes = Vec::new();
        index.encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert!(TagIndex::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }
}
