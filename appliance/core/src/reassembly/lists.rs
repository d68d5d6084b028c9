//! Intrusive doubly linked lists over entry indices.
//!
//! Every dump entry sits on exactly one list (free, claims, assembling, lingering with chunks,
//! lingering without chunks, lingering claims). Claims are dumps still assembling with a
//! single packet received: on a list of their own, the eviction victim among them (and the
//! proof that no dump with more evidence has to be touched) is the front of one list, found
//! without scanning. Lists are kept in order of last activity by moving an entry to the back
//! whenever a packet touches it, so the front of each list is both the eviction victim and the
//! earliest deadline. All storage is allocated once; every operation is O(1).

use alloc::vec::Vec;

const NIL: u32 = u32::MAX;

/// Which list an entry is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListId {
    Free = 0,
    /// Assembling with fewer than [`super::ESTABLISHED`] packets: what a spoofed datagram
    /// makes, so what a newcomer may displace.
    Claim = 1,
    /// Assembling with at least [`super::ESTABLISHED`] packets: never displaced by a newcomer.
    Assembling = 2,
    LingerFull = 3,
    LingerBare = 4,
    /// Emitted with fewer than [`super::ESTABLISHED`] packets (chunks held): forgotten first
    /// when room is short, so a storm of spoofed claims does not push out completed dumps
    /// that are still absorbing their later rounds.
    LingerClaim = 5,
}

const LISTS: usize = 6;

#[derive(Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    list: ListId,
}

pub(crate) struct IndexLists {
    links: Vec<Link>,
    head: [u32; LISTS],
    tail: [u32; LISTS],
    len: [usize; LISTS],
}

impl IndexLists {
    /// `n` entries, all on the free list in index order (written as the finished list in one
    /// pass: linking them one by one was a noticeable part of the appliance's boot).
    pub(crate) fn new(n: usize) -> Self {
        let last = (n as u32).wrapping_sub(1);
        let links = (0..n as u32)
            .map(|i| Link {
                prev: if i == 0 { NIL } else { i - 1 },
                next: if i == last { NIL } else { i + 1 },
                list: ListId::Free,
            })
            .collect();
        let mut lists = IndexLists {
            links,
            head: [NIL; LISTS],
            tail: [NIL; LISTS],
            len: [0; LISTS],
        };
        if n > 0 {
            let free = ListId::Free as usize;
            lists.head[free] = 0;
            lists.tail[free] = last;
            lists.len[free] = n;
        }
        lists
    }

    pub(crate) fn list_of(&self, idx: u32) -> ListId {
        self.links[idx as usize].list
    }

    pub(crate) fn front(&self, list: ListId) -> Option<u32> {
        let h = self.head[list as usize];
        (h != NIL).then_some(h)
    }

    #[cfg(test)]
    pub(crate) fn next(&self, idx: u32) -> Option<u32> {
        let n = self.links[idx as usize].next;
        (n != NIL).then_some(n)
    }

    pub(crate) fn len(&self, list: ListId) -> usize {
        self.len[list as usize]
    }

    /// Moves `idx` to the back of `list` (also when it is already on it).
    pub(crate) fn move_to_back(&mut self, idx: u32, list: ListId) {
        // A burst from one sender finds its dump at the back already: nothing to relink.
        if self.links[idx as usize].list == list && self.tail[list as usize] == idx {
            return;
        }
        self.unlink(idx);
        self.link_back(idx, list);
    }

    fn unlink(&mut self, idx: u32) {
        let Link { prev, next, list } = self.links[idx as usize];
        let l = list as usize;
        if prev == NIL {
            self.head[l] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail[l] = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.len[l] -= 1;
    }

    fn link_back(&mut self, idx: u32, list: ListId) {
        let l = list as usize;
        let tail = self.tail[l];
        self.links[idx as usize] = Link {
            prev: tail,
            next: NIL,
            list,
        };
        if tail == NIL {
            self.head[l] = idx;
        } else {
            self.links[tail as usize].next = idx;
        }
        self.tail[l] = idx;
        self.len[l] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lists: &IndexLists, list: ListId) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cur = lists.front(list);
        while let Some(i) = cur {
            out.push(i);
            cur = lists.next(i);
        }
        out
    }

    #[test]
    fn moves_keep_every_list_consistent() {
        let mut l = IndexLists::new(4);
        assert_eq!(collect(&l, ListId::Free), [0, 1, 2, 3]);
        l.move_to_back(2, ListId::Assembling);
        l.move_to_back(0, ListId::Assembling);
        l.move_to_back(2, ListId::Assembling);
        assert_eq!(collect(&l, ListId::Assembling), [0, 2]);
        assert_eq!(collect(&l, ListId::Free), [1, 3]);
        l.move_to_back(0, ListId::LingerFull);
        assert_eq!(collect(&l, ListId::Assembling), [2]);
        assert_eq!(l.list_of(0), ListId::LingerFull);
        assert_eq!(l.len(ListId::Free), 2);
        assert_eq!(l.len(ListId::LingerFull), 1);
        // The front and the back of the list built at start move out and back cleanly.
        l.move_to_back(1, ListId::Claim);
        l.move_to_back(3, ListId::Claim);
        assert_eq!(collect(&l, ListId::Free), []);
        l.move_to_back(3, ListId::Free);
        l.move_to_back(1, ListId::Free);
        assert_eq!(collect(&l, ListId::Free), [3, 1]);
    }

    #[test]
    fn lists_of_one_and_no_entries() {
        let mut one = IndexLists::new(1);
        assert_eq!(collect(&one, ListId::Free), [0]);
        one.move_to_back(0, ListId::Claim);
        assert_eq!((one.len(ListId::Free), one.front(ListId::Free)), (0, None));
        assert_eq!(collect(&one, ListId::Claim), [0]);
        let none = IndexLists::new(0);
        assert_eq!(
            (none.len(ListId::Free), none.front(ListId::Free)),
            (0, None)
        );
    }
}
