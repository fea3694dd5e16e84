//! The engine's routing tables: subscriptions by topic filter ([`SubscriptionTable`]) and retained messages by
//! topic name ([`RetainedTable`]), both tries over topic levels so that neither a publish nor a wildcard
//! subscription scans every entry.
//!
//! Both tables share one trie layout ([`Trie`]), chosen for memory because the broker's target is a few KB per
//! client and IoT topics repeat the same level under many parents (`sensors/{id}/temperature`):
//! - nodes live in one slab (`Vec`) and refer to each other by `u32` index, so a node is ~40 bytes, parents are
//!   reachable for pruning without recursion, and a hostile 30,000-level filter cannot overflow the stack;
//! - level strings are interned once for the whole trie ([`Levels`]), however many parents they appear under;
//! - literal children are found through one table of edges `(parent, level) -> child` for the whole trie (about
//!   16 bytes an edge, instead of an empty hash map in every node) and enumerated, for wildcard lookups of
//!   retained messages, through an intrusive list of siblings;
//! - the `+` child is kept apart from the literal ones, and a filter ending in `/#` is kept in its parent
//!   (`multi`), since `#` matches the parent level too (`a/#` matches `a`).
//!
//! Empty nodes are removed as soon as the last entry under them goes, so memory follows what is subscribed or
//! retained, and returns to the empty table's when everything is gone.
//!
//! Matching follows `ferrite_core::filter_matches` exactly (the tests use it as the oracle), including MQTT-4.7.2-1:
//! a filter starting with a wildcard does not match a topic whose first level starts with `$`.
//! Filters are expected to be valid (the codec's `check_topic_filter` runs first); a `#` that is not the last level
//! is kept as a literal level, so such a filter matches no valid topic name.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use smallvec::SmallVec;

/// Trie nodes a match keeps in its working set without allocating. A topic usually matches through a handful of
/// nodes per level (its literal path, a `+` branch or two); more than this spills to the heap, correctly but slower.
const INLINE_NODES: usize = 16;

/// A subscriber list is searched linearly up to this many members, and through a hash index above it: a filter
/// with one or a few subscribers (the common case, `commands/{id}`) pays no index, while 100,000 clients
/// subscribing to one broadcast filter do not cost a quadratic number of comparisons.
const INDEX_ABOVE: usize = 16;

/// The index of a subscriber list is dropped when it shrinks to this many members (below [`INDEX_ABOVE`], so that
/// a list oscillating around the threshold does not rebuild its index on every change).
const UNINDEX_AT: usize = 8;

/// The prefix of a shared subscription's filter (MQTT 5 section 4.8.2).
const SHARED_PREFIX: &str = "$share/";

/// Splits a shared subscription's filter `$share/{group}/{filter}` into its group name and its topic filter, or
/// `None` if `filter` is not a shared subscription. Validation (a non-empty group without `+` or `#`, a valid
/// filter after it) is the codec's `check_topic_filter`; this only parses.
pub(crate) fn split_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix(SHARED_PREFIX)?.split_once('/')
}

/// One subscription that matched a topic, handed to [`SubscriptionTable::for_each_match`]'s visitor.
/// The engine routes by key and members alone; the filter and group that matched are what the property tests
/// compare with the oracle.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Match<'a, K, V> {
    /// An ordinary subscription: deliver to `key`.
    Direct {
        key: &'a K,
        value: &'a V,
        /// The filter that matched (without any `$share/{group}/` prefix).
        filter: &'a str,
    },
    /// A shared subscription group: deliver to one of `members`. The caller chooses (round robin from `next`,
    /// preferring connected members, which only it knows); the table only keeps the counter.
    Shared {
        group: &'a str,
        /// The filter that matched (without the `$share/{group}/` prefix).
        filter: &'a str,
        /// Never empty: a group goes when its last member does.
        members: &'a [(K, V)],
        next: &'a AtomicUsize,
    },
}

/// Subscriptions by topic filter, from key `K` (the client id, e.g. `Arc<str>`) to its options `V`, with `$share`
/// groups. At most one subscription per (filter, group or none, key): subscribing again replaces the options.
pub(crate) struct SubscriptionTable<K, V> {
    trie: Trie<Filters<K, V>>,
    /// Subscriptions (a shared group counts each member).
    len: usize,
}

impl<K: Clone + Eq + Hash, V: Clone> Default for SubscriptionTable<K, V> {
    fn default() -> Self {
        Self { trie: Trie::new(), len: 0 }
    }
}

impl<K: Clone + Eq + Hash, V: Clone> SubscriptionTable<K, V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Subscribes `key` to `filter` (given without its `$share/{group}/` prefix; `group` is the shared group's name,
    /// or `None` for an ordinary subscription). Returns the options it replaces if `key` was already subscribed to
    /// the same filter in the same group (MQTT-3.8.4-3: a new SUBSCRIBE replaces the existing subscription).
    pub(crate) fn subscribe(&mut self, filter: &str, group: Option<&str>, key: K, value: V) -> Option<V> {
        let (node, multi) = self.trie.insert_path(filter, true);
        let slot = self.trie.data_mut(node).slot_mut(multi);
        let subscribers = slot.get_or_insert_with(|| Box::new(Subscribers::new(filter)));
        let replaced = match group {
            None => subscribers.direct.insert(key, value),
            Some(name) => {
                let index = match subscribers.groups.iter().position(|g| &*g.name == name) {
                    Some(index) => index,
                    None => {
                        subscribers.groups.push(Group {
                            name: name.into(),
                            members: Members::default(),
                            next: AtomicUsize::new(0),
                        });
                        subscribers.groups.len() - 1
                    }
                };
                subscribers.groups[index].members.insert(key, value)
            }
        };
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    /// Removes `key`'s subscription to `filter` in `group` (as in [`Self::subscribe`]) and returns its options, or
    /// `None` if there was none. Nodes left empty are removed.
    pub(crate) fn unsubscribe(&mut self, filter: &str, group: Option<&str>, key: &K) -> Option<V> {
        let (node, multi) = self.trie.find_path(filter, true)?;
        let slot = self.trie.data_mut(node).slot_mut(multi);
        let subscribers = slot.as_mut()?;
        let removed = match group {
            None => subscribers.direct.remove(key)?,
            Some(name) => {
                let index = subscribers.groups.iter().position(|g| &*g.name == name)?;
                let removed = subscribers.groups[index].members.remove(key)?;
                if subscribers.groups[index].members.list.is_empty() {
                    subscribers.groups.swap_remove(index);
                }
                removed
            }
        };
        if subscribers.direct.list.is_empty() && subscribers.groups.is_empty() {
            *slot = None;
        }
        self.len -= 1;
        self.trie.prune(node);
        Some(removed)
    }

    /// Calls `visit` once for every subscription matching the topic name `topic`, and once for every shared group
    /// with a matching filter. A key subscribed through several matching filters is visited once per filter
    /// (merging overlapping subscriptions is the caller's, MQTT-3.3.4-2).
    ///
    /// Walks the trie level by level with the set of nodes matching so far, so each topic level is looked up in
    /// the level interner once, whatever the number of nodes; it allocates nothing unless more than
    /// [`INLINE_NODES`] nodes match at one level.
    pub(crate) fn for_each_match(&self, topic: &str, mut visit: impl FnMut(Match<'_, K, V>)) {
        let dollar = topic.starts_with('$');
        let mut active: SmallVec<[NodeId; INLINE_NODES]> = SmallVec::new();
        let mut next: SmallVec<[NodeId; INLINE_NODES]> = SmallVec::new();
        active.push(ROOT);
        // MQTT-4.7.2-1: no wildcard at the first level matches a `$` topic.
        let mut wildcards = !dollar;
        for level in topic.split('/') {
            let interned = self.trie.levels.get(level);
            for &id in &active {
                let node = self.trie.node(id);
                if wildcards {
                    // `#` below this node matches whatever levels remain.
                    emit(&node.data.multi, &mut visit);
                    if node.plus != NONE {
                        next.push(node.plus);
                    }
                }
                if let Some(child) = interned.and_then(|level| self.trie.edges.get(&(id, level))) {
                    next.push(*child);
                }
            }
            std::mem::swap(&mut active, &mut next);
            next.clear();
            if active.is_empty() {
                return;
            }
            wildcards = true;
        }
        for &id in &active {
            let data = &self.trie.node(id).data;
            emit(&data.exact, &mut visit);
            // `#` matches the parent level too: `a/#` matches `a`.
            emit(&data.multi, &mut visit);
        }
    }

    /// Subscriptions (a shared group counts each member).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes besides the root: zero when the table is empty (the tests check that unsubscribing prunes).
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.trie.live
    }
}

/// Visits every subscription of one filter.
fn emit<'a, K, V>(subscribers: &'a Option<Box<Subscribers<K, V>>>, visit: &mut impl FnMut(Match<'a, K, V>)) {
    let Some(subscribers) = subscribers else { return };
    for (key, value) in &subscribers.direct.list {
        visit(Match::Direct { key, value, filter: &subscribers.filter });
    }
    for group in &subscribers.groups {
        visit(Match::Shared {
            group: &group.name,
            filter: &subscribers.filter,
            members: &group.members.list,
            next: &group.next,
        });
    }
}

/// What a node of the subscription trie holds: the subscriptions whose filter ends at it (`exact`) and those whose
/// filter ends at it followed by `/#` (`multi`). Boxed, so the many nodes that only lead somewhere cost 16 bytes.
struct Filters<K, V> {
    exact: Option<Box<Subscribers<K, V>>>,
    multi: Option<Box<Subscribers<K, V>>>,
}

impl<K, V> Default for Filters<K, V> {
    fn default() -> Self {
        Self { exact: None, multi: None }
    }
}

impl<K, V> Filters<K, V> {
    fn slot_mut(&mut self, multi: bool) -> &mut Option<Box<Subscribers<K, V>>> {
        if multi { &mut self.multi } else { &mut self.exact }
    }
}

impl<K, V> NodeData for Filters<K, V> {
    fn is_empty(&self) -> bool {
        self.exact.is_none() && self.multi.is_none()
    }
}

/// The subscriptions to one filter: ordinary ones and shared groups.
struct Subscribers<K, V> {
    /// The whole filter (without `$share/{group}/`), stored once per filter for [`Match`].
    filter: Box<str>,
    direct: Members<K, V>,
    /// Usually none or one, so a vector searched by name.
    groups: Vec<Group<K, V>>,
}

impl<K, V> Subscribers<K, V> {
    fn new(filter: &str) -> Self {
        Self { filter: filter.into(), direct: Members::default(), groups: Vec::new() }
    }
}

/// A `$share` group of one filter.
struct Group<K, V> {
    name: Box<str>,
    /// Never empty while the group is in the table.
    members: Members<K, V>,
    /// The caller's round-robin position.
    next: AtomicUsize,
}

/// Subscribers of one filter or group: a vector the matcher walks, indexed by key once it is long.
struct Members<K, V> {
    list: Vec<(K, V)>,
    /// Position of each key in `list`, kept only above [`INDEX_ABOVE`] members.
    index: Option<HashMap<K, usize>>,
}

impl<K, V> Default for Members<K, V> {
    fn default() -> Self {
        Self { list: Vec::new(), index: None }
    }
}

impl<K: Clone + Eq + Hash, V> Members<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.list.iter().position(|(k, _)| k == key),
        }
    }

    /// Adds or replaces `key`'s value; returns the replaced one.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            return Some(std::mem::replace(&mut self.list[i].1, value));
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.list.len());
        }
        self.list.push((key, value));
        if self.index.is_none() && self.list.len() > INDEX_ABOVE {
            self.index = Some(self.list.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect());
        }
        None
    }

    /// Removes `key` (moving the last member into its place) and returns its value.
    fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(key);
            if let Some((moved, _)) = self.list.get(i) {
                index.insert(moved.clone(), i);
            }
            if self.list.len() <= UNINDEX_AT {
                self.index = None;
            }
        }
        shrink_vec(&mut self.list);
        Some(value)
    }
}

/// Retained messages by topic name. A trie, so a subscription with wildcards finds its retained messages by walking
/// only the branches its filter can match.
pub(crate) struct RetainedTable<V> {
    /// Each node holds the message retained on the topic ending at it, with that topic (for the visitor).
    trie: Trie<Option<(Box<str>, V)>>,
    len: usize,
}

impl<V> Default for RetainedTable<V> {
    fn default() -> Self {
        Self { trie: Trie::new(), len: 0 }
    }
}

impl<V> RetainedTable<V> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Retains `value` on `topic` (a topic name: `+` and `#` are literal characters here); returns the message it
    /// replaces.
    pub(crate) fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let (node, _) = self.trie.insert_path(topic, false);
        let slot = self.trie.data_mut(node);
        if let Some((_, old)) = slot {
            return Some(std::mem::replace(old, value));
        }
        *slot = Some((topic.into(), value));
        self.len += 1;
        None
    }

    /// Removes the message retained on `topic`, pruning the nodes left empty.
    pub(crate) fn remove(&mut self, topic: &str) -> Option<V> {
        let (node, _) = self.trie.find_path(topic, false)?;
        let (_, value) = self.trie.data_mut(node).take()?;
        self.len -= 1;
        self.trie.prune(node);
        Some(value)
    }

    /// Calls `visit` with every retained message whose topic `filter` (without `$share/`) matches.
    ///
    /// Walks the filter level by level: a literal level follows one edge, `+` every literal child, `#` the whole
    /// subtree (the node itself included). At the first level, wildcards skip topics starting with `$`.
    pub(crate) fn for_each_matching(&self, filter: &str, mut visit: impl FnMut(&str, &V)) {
        let mut active: SmallVec<[NodeId; INLINE_NODES]> = SmallVec::new();
        let mut next: SmallVec<[NodeId; INLINE_NODES]> = SmallVec::new();
        active.push(ROOT);
        let mut first = true;
        for level in filter.split('/') {
            match level {
                "#" => {
                    for &id in &active {
                        self.visit_subtree(id, first, &mut visit);
                    }
                    return;
                }
                "+" => {
                    for &id in &active {
                        next.extend(
                            self.trie.literal_children(id).filter(|&c| !(first && self.trie.label(c).starts_with('$'))),
                        );
                    }
                }
                literal => {
                    if let Some(level) = self.trie.levels.get(literal) {
                        next.extend(active.iter().filter_map(|&id| self.trie.edges.get(&(id, level)).copied()));
                    }
                }
            }
            std::mem::swap(&mut active, &mut next);
            next.clear();
            if active.is_empty() {
                return;
            }
            first = false;
        }
        for &id in &active {
            if let Some((topic, value)) = &self.trie.node(id).data {
                visit(topic, value);
            }
        }
    }

    /// Visits the message at `id` and every one below it, skipping first levels starting with `$` when `id` is the
    /// root and `skip_dollar` (a filter `#`). Depth-first with an explicit stack.
    fn visit_subtree(&self, id: NodeId, skip_dollar: bool, visit: &mut impl FnMut(&str, &V)) {
        let mut stack: SmallVec<[NodeId; INLINE_NODES]> = SmallVec::new();
        stack.push(id);
        while let Some(id) = stack.pop() {
            if let Some((topic, value)) = &self.trie.node(id).data {
                visit(topic, value);
            }
            let top = skip_dollar && id == ROOT;
            stack.extend(self.trie.literal_children(id).filter(|&c| !(top && self.trie.label(c).starts_with('$'))));
        }
    }

    /// Retained messages.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Trie nodes besides the root: zero when nothing is retained.
    #[cfg(test)]
    fn node_count(&self) -> usize {
        self.trie.live
    }
}

impl<V> NodeData for Option<(Box<str>, V)> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

/// Index of a node in [`Trie::nodes`].
type NodeId = u32;
/// Index of a level string in [`Levels`].
type LevelId = u32;

/// The root node, always present. It is nobody's child or sibling, so its index also means "none" in links.
const ROOT: NodeId = 0;
/// No child or sibling.
const NONE: NodeId = 0;
/// The label of a `+` node (which has no level string).
const PLUS: LevelId = LevelId::MAX;

/// What a trie node holds; a node whose data is empty and that has no children is removed.
trait NodeData: Default {
    fn is_empty(&self) -> bool;
}

struct Node<T> {
    parent: NodeId,
    /// The level leading here from `parent`: an interned level, or [`PLUS`].
    label: LevelId,
    /// The literal children form a doubly linked list through `next_sibling` / `prev_sibling`, so that removing
    /// one is O(1) and `+` / `#` lookups of retained messages can enumerate them.
    first_child: NodeId,
    next_sibling: NodeId,
    prev_sibling: NodeId,
    /// The `+` child, [`NONE`] if none.
    plus: NodeId,
    data: T,
}

/// A trie over topic levels (see the module documentation for the layout and why).
struct Trie<T> {
    /// Slab of nodes; `None` slots are free and listed in `free`.
    nodes: Vec<Option<Node<T>>>,
    free: Vec<NodeId>,
    /// Nodes besides the root.
    live: usize,
    /// Literal children: `(parent, level) -> child`.
    edges: HashMap<(NodeId, LevelId), NodeId>,
    levels: Levels,
}

impl<T: NodeData> Trie<T> {
    fn new() -> Self {
        Self {
            nodes: vec![Some(Self::blank(ROOT, PLUS))],
            free: Vec::new(),
            live: 0,
            edges: HashMap::new(),
            levels: Levels::default(),
        }
    }

    fn blank(parent: NodeId, label: LevelId) -> Node<T> {
        Node {
            parent,
            label,
            first_child: NONE,
            next_sibling: NONE,
            prev_sibling: NONE,
            plus: NONE,
            data: T::default(),
        }
    }

    fn node(&self, id: NodeId) -> &Node<T> {
        self.nodes[id as usize].as_ref().expect("trie links point at live nodes")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node<T> {
        self.nodes[id as usize].as_mut().expect("trie links point at live nodes")
    }

    fn data_mut(&mut self, id: NodeId) -> &mut T {
        &mut self.node_mut(id).data
    }

    /// The level string leading to `id` (`+` for a `+` node).
    fn label(&self, id: NodeId) -> &str {
        match self.node(id).label {
            PLUS => "+",
            level => self.levels.text(level),
        }
    }

    fn literal_children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let mut child = self.node(id).first_child;
        std::iter::from_fn(move || {
            (child != NONE).then(|| {
                let this = child;
                child = self.node(this).next_sibling;
                this
            })
        })
    }

    /// The node a path ends at, creating what is missing, and whether it ended with `/#` (then the node is the
    /// parent of the `#`). With `wildcards` false (topic names), `+` and `#` are literal levels.
    fn insert_path(&mut self, path: &str, wildcards: bool) -> (NodeId, bool) {
        let mut node = ROOT;
        let mut levels = path.split('/').peekable();
        while let Some(level) = levels.next() {
            if wildcards && level == "#" && levels.peek().is_none() {
                return (node, true);
            }
            node =
                if wildcards && level == "+" { self.plus_or_insert(node) } else { self.literal_or_insert(node, level) };
        }
        (node, false)
    }

    /// [`Self::insert_path`] without creating anything: `None` if the path is not in the trie.
    fn find_path(&self, path: &str, wildcards: bool) -> Option<(NodeId, bool)> {
        let mut node = ROOT;
        let mut levels = path.split('/').peekable();
        while let Some(level) = levels.next() {
            if wildcards && level == "#" && levels.peek().is_none() {
                return Some((node, true));
            }
            node = if wildcards && level == "+" {
                Some(self.node(node).plus).filter(|&plus| plus != NONE)?
            } else {
                *self.edges.get(&(node, self.levels.get(level)?))?
            };
        }
        Some((node, false))
    }

    fn plus_or_insert(&mut self, parent: NodeId) -> NodeId {
        let plus = self.node(parent).plus;
        if plus != NONE {
            return plus;
        }
        let plus = self.alloc(Self::blank(parent, PLUS));
        self.node_mut(parent).plus = plus;
        plus
    }

    fn literal_or_insert(&mut self, parent: NodeId, level: &str) -> NodeId {
        if let Some(child) = self.levels.get(level).and_then(|level| self.edges.get(&(parent, level))) {
            return *child;
        }
        let label = self.levels.acquire(level);
        let first = self.node(parent).first_child;
        let mut node = Self::blank(parent, label);
        node.next_sibling = first;
        let child = self.alloc(node);
        if first != NONE {
            self.node_mut(first).prev_sibling = child;
        }
        self.node_mut(parent).first_child = child;
        self.edges.insert((parent, label), child);
        child
    }

    fn alloc(&mut self, node: Node<T>) -> NodeId {
        self.live += 1;
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = Some(node);
                id
            }
            None => {
                let id = NodeId::try_from(self.nodes.len()).expect("fewer than 2^32 trie nodes");
                self.nodes.push(Some(node));
                id
            }
        }
    }

    /// Removes `id` and then its ancestors for as long as they hold nothing and have no children.
    fn prune(&mut self, mut id: NodeId) {
        while id != ROOT {
            let node = self.node(id);
            if !node.data.is_empty() || node.first_child != NONE || node.plus != NONE {
                break;
            }
            let node = self.nodes[id as usize].take().expect("trie links point at live nodes");
            self.free.push(id);
            self.live -= 1;
            if node.label == PLUS {
                self.node_mut(node.parent).plus = NONE;
            } else {
                if node.prev_sibling == NONE {
                    self.node_mut(node.parent).first_child = node.next_sibling;
                } else {
                    self.node_mut(node.prev_sibling).next_sibling = node.next_sibling;
                }
                if node.next_sibling != NONE {
                    self.node_mut(node.next_sibling).prev_sibling = node.prev_sibling;
                }
                self.edges.remove(&(node.parent, node.label));
                shrink_map(&mut self.edges);
                self.levels.release(node.label);
            }
            id = node.parent;
        }
        if self.live == 0 {
            // Back to the empty trie's memory: the slab keeps its high-water mark until then.
            self.nodes.truncate(1);
            self.nodes.shrink_to_fit();
            self.free = Vec::new();
            self.edges = HashMap::new();
            self.levels = Levels::default();
        }
    }
}

/// Level strings, interned: each distinct level is stored once, with the number of trie edges using it.
#[derive(Default)]
struct Levels {
    ids: HashMap<Arc<str>, LevelId>,
    /// By id: the text (`None` when the id is free) and how many edges use it.
    slots: Vec<(Option<Arc<str>>, u32)>,
    free: Vec<LevelId>,
}

impl Levels {
    fn get(&self, text: &str) -> Option<LevelId> {
        self.ids.get(text).copied()
    }

    fn text(&self, id: LevelId) -> &str {
        self.slots[id as usize].0.as_deref().expect("trie labels point at live levels")
    }

    /// The id of `text`, interning it if needed; counts one more edge using it.
    fn acquire(&mut self, text: &str) -> LevelId {
        if let Some(id) = self.get(text) {
            self.slots[id as usize].1 += 1;
            return id;
        }
        let text: Arc<str> = Arc::from(text);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = (Some(text.clone()), 1);
                id
            }
            None => {
                // Below PLUS, which labels `+` nodes.
                let id =
                    LevelId::try_from(self.slots.len()).ok().filter(|&id| id != PLUS).expect("fewer than 2^32 levels");
                self.slots.push((Some(text.clone()), 1));
                id
            }
        };
        self.ids.insert(text, id);
        id
    }

    /// Counts one edge fewer using `id`, forgetting the level when none does.
    fn release(&mut self, id: LevelId) {
        let slot = &mut self.slots[id as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            let text = slot.0.take().expect("released levels are live");
            self.ids.remove(&*text);
            self.free.push(id);
            shrink_map(&mut self.ids);
        }
    }
}

/// Gives memory back once a map is mostly empty (a map never shrinks by itself). Halving at a quarter full keeps
/// the cost amortised O(1) per removal.
fn shrink_map<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// [`shrink_map`] for a vector.
fn shrink_vec<T>(vec: &mut Vec<T>) {
    if vec.capacity() > 8 && vec.len() * 4 < vec.capacity() {
        vec.shrink_to(vec.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Instant;

    use ferrite_core::filter_matches;
    use proptest::prelude::*;

    use super::*;

    /// One subscription as the tests see it: (group, filter, key, value).
    type Row = (Option<String>, String, u8, u32);

    /// Every (group, filter, key, value) matching `topic`, sorted; a shared group contributes each member.
    fn matched(table: &SubscriptionTable<u8, u32>, topic: &str) -> Vec<Row> {
        let mut rows = Vec::new();
        table.for_each_match(topic, |found| match found {
            Match::Direct { key, value, filter } => rows.push((None, filter.to_owned(), *key, *value)),
            Match::Shared { group, filter, members, .. } => {
                assert!(!members.is_empty(), "group {group} of {filter} is in the table without members");
                for (key, value) in members {
                    rows.push((Some(group.to_owned()), filter.to_owned(), *key, *value));
                }
            }
        });
        rows.sort();
        rows
    }

    /// The filters (without group) matching `topic`, sorted, duplicates kept.
    fn filters(table: &SubscriptionTable<u8, u32>, topic: &str) -> Vec<String> {
        let mut filters: Vec<String> = matched(table, topic).into_iter().map(|(_, filter, ..)| filter).collect();
        filters.sort();
        filters
    }

    /// Every subscription in the table, read from the trie itself, sorted.
    fn contents(table: &SubscriptionTable<u8, u32>) -> Vec<Row> {
        let mut rows = Vec::new();
        for node in table.trie.nodes.iter().flatten() {
            for subscribers in [&node.data.exact, &node.data.multi].into_iter().flatten() {
                for (key, value) in &subscribers.direct.list {
                    rows.push((None, subscribers.filter.to_string(), *key, *value));
                }
                for group in &subscribers.groups {
                    for (key, value) in &group.members.list {
                        rows.push((Some(group.name.to_string()), subscribers.filter.to_string(), *key, *value));
                    }
                }
            }
        }
        rows.sort();
        rows
    }

    /// The trie holds nothing but its root, and its side tables are back to empty.
    fn assert_pristine<T: NodeData>(trie: &Trie<T>) {
        assert_eq!(trie.live, 0, "nodes besides the root");
        assert_eq!(trie.nodes.len(), 1, "slab slots");
        assert!(trie.free.is_empty() && trie.free.capacity() == 0, "free list");
        assert!(trie.edges.is_empty() && trie.edges.capacity() == 0, "edges");
        assert!(trie.levels.ids.is_empty() && trie.levels.slots.is_empty(), "interned levels");
        let root = trie.node(ROOT);
        assert!(root.first_child == NONE && root.plus == NONE && root.data.is_empty(), "root");
    }

    fn table(filters: &[&str]) -> SubscriptionTable<u8, u32> {
        let mut table = SubscriptionTable::new();
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(table.subscribe(filter, None, 0, i as u32), None);
        }
        table
    }

    #[test]
    fn multi_level_wildcard_matches_the_parent_and_every_level_below() {
        // MQTT 5 section 4.7.1.2.
        let table = table(&["sport/tennis/player1/#", "sport/#"]);
        assert_eq!(filters(&table, "sport/tennis/player1"), ["sport/#", "sport/tennis/player1/#"]);
        assert_eq!(filters(&table, "sport/tennis/player1/ranking"), ["sport/#", "sport/tennis/player1/#"]);
        assert_eq!(filters(&table, "sport/tennis/player1/score/wimbledon"), ["sport/#", "sport/tennis/player1/#"]);
        assert_eq!(filters(&table, "sport/tennis/player2"), ["sport/#"]);
        assert_eq!(filters(&table, "sport"), ["sport/#"]);
        assert!(filters(&table, "sports").is_empty());
        let all = table_with_hash();
        assert_eq!(filters(&all, "a/b/c"), ["#"]);
        assert_eq!(filters(&all, "/"), ["#"]);
    }

    fn table_with_hash() -> SubscriptionTable<u8, u32> {
        table(&["#"])
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // MQTT 5 section 4.7.1.3.
        let table = table(&["sport/tennis/+", "sport/+", "+/+", "/+", "+", "+/tennis/#"]);
        assert_eq!(filters(&table, "sport/tennis/player1"), ["+/tennis/#", "sport/tennis/+"]);
        assert_eq!(filters(&table, "sport/tennis/player2"), ["+/tennis/#", "sport/tennis/+"]);
        assert!(filters(&table, "sport/tennis/player1/ranking").contains(&"+/tennis/#".to_owned()));
        assert!(!filters(&table, "sport/tennis/player1/ranking").contains(&"sport/tennis/+".to_owned()));
        // `sport/+` does not match `sport` but matches `sport/`.
        assert_eq!(filters(&table, "sport"), ["+"]);
        assert_eq!(filters(&table, "sport/"), ["+/+", "sport/+"]);
        // `+/+` and `/+` match `/finance`, `+` does not.
        assert_eq!(filters(&table, "/finance"), ["+/+", "/+"]);
        assert_eq!(filters(&table, "sport/tennis"), ["+/+", "+/tennis/#", "sport/+"]);
    }

    #[test]
    fn wildcards_at_the_first_level_skip_dollar_topics() {
        // MQTT-4.7.2-1, and the examples of section 4.7.2.
        let table = table(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+", "+/#"]);
        assert_eq!(filters(&table, "$SYS/monitor/Clients"), ["$SYS/#", "$SYS/monitor/+"]);
        assert_eq!(filters(&table, "$SYS"), ["$SYS/#"]);
        assert_eq!(filters(&table, "SYS/monitor/Clients"), ["#", "+/#", "+/monitor/Clients"]);
        // Only the first level counts.
        assert_eq!(filters(&table, "a/$SYS"), ["#", "+/#"]);
    }

    #[test]
    fn empty_levels_are_levels() {
        let table = table(&["a//b", "a/+/b", "/", "+/", "a/"]);
        assert_eq!(filters(&table, "a//b"), ["a/+/b", "a//b"]);
        assert_eq!(filters(&table, "/"), ["+/", "/"]);
        assert_eq!(filters(&table, "a/"), ["+/", "a/"]);
        assert!(filters(&table, "a").is_empty());
    }

    #[test]
    fn resubscribing_replaces_the_options() {
        let mut table = SubscriptionTable::new();
        assert_eq!(table.subscribe("a/+", None, 1u8, 10u32), None);
        assert_eq!(table.subscribe("a/+", None, 1, 11), Some(10));
        assert_eq!(table.len(), 1);
        assert_eq!(matched(&table, "a/b"), [(None, "a/+".to_owned(), 1, 11)]);
        // Another key, another filter, a group: separate subscriptions.
        assert_eq!(table.subscribe("a/+", None, 2, 20), None);
        assert_eq!(table.subscribe("a/#", None, 1, 12), None);
        assert_eq!(table.subscribe("a/+", Some("g"), 1, 13), None);
        assert_eq!(table.len(), 4);
        assert_eq!(
            matched(&table, "a/b"),
            [
                (None, "a/#".to_owned(), 1, 12),
                (None, "a/+".to_owned(), 1, 11),
                (None, "a/+".to_owned(), 2, 20),
                (Some("g".to_owned()), "a/+".to_owned(), 1, 13),
            ]
        );
    }

    #[test]
    fn shared_groups_of_one_filter_are_separate_and_hold_a_key_once() {
        let mut table = SubscriptionTable::new();
        table.subscribe("s/+", Some("g1"), 1u8, 1u32);
        table.subscribe("s/+", Some("g1"), 2, 2);
        table.subscribe("s/+", Some("g2"), 1, 3);
        // The same key in a group twice: one member, the options replaced.
        assert_eq!(table.subscribe("s/+", Some("g1"), 1, 4), Some(1));
        assert_eq!(table.len(), 3);
        let mut groups = Vec::new();
        table.for_each_match("s/x", |found| match found {
            Match::Shared { group, filter, members, next } => {
                assert_eq!(filter, "s/+");
                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut members = members.to_vec();
                members.sort();
                groups.push((group.to_owned(), members));
            }
            Match::Direct { .. } => panic!("no direct subscription was made"),
        });
        groups.sort();
        assert_eq!(groups, [("g1".to_owned(), vec![(1, 4), (2, 2)]), ("g2".to_owned(), vec![(1, 3)])]);
        // The round-robin counter is the group's and persists between matches.
        let mut seen = Vec::new();
        table.for_each_match("s/y", |found| {
            if let Match::Shared { group, next, .. } = found {
                seen.push((group.to_owned(), next.load(std::sync::atomic::Ordering::Relaxed)));
            }
        });
        seen.sort();
        assert_eq!(seen, [("g1".to_owned(), 1), ("g2".to_owned(), 1)]);
        // Leaving: a group goes with its last member, and the table with its last group.
        assert_eq!(table.unsubscribe("s/+", Some("g2"), &1), Some(3));
        assert_eq!(table.unsubscribe("s/+", Some("g2"), &1), None);
        assert_eq!(table.unsubscribe("s/+", None, &2), None, "a member of a group is not a direct subscriber");
        assert_eq!(table.unsubscribe("s/+", Some("g1"), &1), Some(4));
        assert_eq!(table.unsubscribe("s/+", Some("g1"), &2), Some(2));
        assert!(table.is_empty());
        assert_pristine(&table.trie);
    }

    #[test]
    fn split_shared_separates_the_group() {
        assert_eq!(split_shared("$share/g/a/b"), Some(("g", "a/b")));
        assert_eq!(split_shared("$share/g/#"), Some(("g", "#")));
        assert_eq!(split_shared("$share/g/"), Some(("g", "")));
        assert_eq!(split_shared("$share/g"), None);
        assert_eq!(split_shared("$SYS/g/a"), None);
        assert_eq!(split_shared("a/$share/g/a"), None);
    }

    #[test]
    fn unsubscribing_everything_prunes_to_the_root() {
        let filters = ["a/b/c", "a/b/#", "a/+/c", "+/+/+", "#", "a", "", "/", "a//", "x/y/z/w"];
        let mut table = SubscriptionTable::new();
        for (i, filter) in filters.iter().enumerate() {
            table.subscribe(filter, None, 1u8, i as u32);
            table.subscribe(filter, Some("g"), 2, i as u32);
        }
        assert_eq!(table.len(), 2 * filters.len());
        assert!(table.node_count() > 0);
        assert_eq!(table.unsubscribe("a/b/c/d", None, &1), None);
        assert_eq!(table.unsubscribe("a/b/c", None, &9), None);
        // Half way: only what is still subscribed is kept.
        for (i, filter) in filters.iter().enumerate() {
            assert_eq!(table.unsubscribe(filter, None, &1), Some(i as u32));
        }
        assert_eq!(table.len(), filters.len());
        for (i, filter) in filters.iter().enumerate().rev() {
            assert_eq!(table.unsubscribe(filter, Some("g"), &2), Some(i as u32));
        }
        assert!(table.is_empty());
        assert_eq!(table.node_count(), 0);
        assert_pristine(&table.trie);
    }

    #[test]
    fn a_long_subscriber_list_is_indexed_and_stays_consistent() {
        let mut table = SubscriptionTable::new();
        for key in 0..100u8 {
            assert_eq!(table.subscribe("t", None, key, u32::from(key)), None);
        }
        for key in (0..100u8).step_by(3) {
            assert_eq!(table.unsubscribe("t", None, &key), Some(u32::from(key)));
            assert_eq!(table.unsubscribe("t", None, &key), None);
        }
        for key in 0..100u8 {
            let expected = (key % 3 != 0).then_some(u32::from(key));
            assert_eq!(table.subscribe("t", None, key, 1000 + u32::from(key)), expected, "key {key}");
        }
        let keys: Vec<u8> = matched(&table, "t").into_iter().map(|(_, _, key, _)| key).collect();
        assert_eq!(keys, (0..100).collect::<Vec<u8>>());
        for key in 0..100u8 {
            assert_eq!(table.unsubscribe("t", None, &key), Some(1000 + u32::from(key)));
        }
        assert_pristine(&table.trie);
    }

    #[test]
    fn a_very_deep_filter_needs_no_recursion() {
        // 30,000 levels, about what a 64 KiB SUBSCRIBE can carry.
        let deep = vec!["a"; 30_000].join("/");
        let mut table = SubscriptionTable::new();
        table.subscribe(&deep, None, 1u8, 1u32);
        table.subscribe(&format!("{deep}/#"), None, 1, 2);
        let plus = vec!["+"; 30_000].join("/");
        table.subscribe(&plus, None, 1, 3);
        assert_eq!(matched(&table, &deep).len(), 3);
        assert_eq!(table.unsubscribe(&deep, None, &1), Some(1));
        assert_eq!(table.unsubscribe(&format!("{deep}/#"), None, &1), Some(2));
        assert_eq!(table.unsubscribe(&plus, None, &1), Some(3));
        assert_pristine(&table.trie);

        let mut retained = RetainedTable::new();
        retained.insert(&deep, 1u32);
        let mut count = 0;
        retained.for_each_matching("#", |_, _| count += 1);
        retained.for_each_matching(&plus, |_, _| count += 1);
        assert_eq!(count, 2);
        assert_eq!(retained.remove(&deep), Some(1));
        assert_pristine(&retained.trie);
    }

    fn retained(topics: &[&str]) -> RetainedTable<u32> {
        let mut table = RetainedTable::new();
        for (i, topic) in topics.iter().enumerate() {
            assert_eq!(table.insert(topic, i as u32), None);
        }
        table
    }

    fn retained_matching(table: &RetainedTable<u32>, filter: &str) -> Vec<String> {
        let mut topics = Vec::new();
        table.for_each_matching(filter, |topic, _| topics.push(topic.to_owned()));
        topics.sort();
        topics
    }

    #[test]
    fn retained_messages_are_found_by_filter() {
        let table = retained(&[
            "sport",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player2",
            "/finance",
            "$SYS/broker/uptime",
            "sport/",
        ]);
        assert_eq!(
            retained_matching(&table, "sport/tennis/player1/#"),
            ["sport/tennis/player1", "sport/tennis/player1/ranking"]
        );
        assert_eq!(retained_matching(&table, "sport/tennis/+"), ["sport/tennis/player1", "sport/tennis/player2"]);
        assert_eq!(retained_matching(&table, "sport/+"), ["sport/"]);
        assert_eq!(retained_matching(&table, "+/+"), ["/finance", "sport/"]);
        assert_eq!(retained_matching(&table, "/+"), ["/finance"]);
        assert_eq!(retained_matching(&table, "+"), ["sport"]);
        assert_eq!(retained_matching(&table, "$SYS/#"), ["$SYS/broker/uptime"]);
        assert_eq!(retained_matching(&table, "+/broker/+"), Vec::<String>::new());
        assert_eq!(retained_matching(&table, "#").len(), 6, "all but $SYS");
        assert_eq!(retained_matching(&table, "sport"), ["sport"]);
        assert_eq!(retained_matching(&table, "nothing/#"), Vec::<String>::new());
    }

    #[test]
    fn retained_replace_and_remove_prune() {
        let mut table = retained(&["a/b", "a/b/c", "a"]);
        assert_eq!(table.insert("a/b", 9), Some(0));
        assert_eq!(table.len(), 3);
        assert_eq!(table.remove("a/b/c/d"), None);
        assert_eq!(table.remove("a/b"), Some(9));
        assert_eq!(table.remove("a/b"), None);
        assert_eq!(retained_matching(&table, "#"), ["a", "a/b/c"]);
        assert_eq!(table.remove("a"), Some(2));
        assert_eq!(table.remove("a/b/c"), Some(1));
        assert_eq!(table.len(), 0);
        assert_eq!(table.node_count(), 0);
        assert_pristine(&table.trie);
    }

    /// Topic levels drawn from a small alphabet, so that random filters and topics collide often.
    fn topic_level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$s"), Just("c")]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(topic_level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    /// A valid filter: levels and `+`, optionally ending in `#`.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop_oneof![3 => topic_level(), 1 => Just("+")];
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map("a filter has a level", |(levels, hash)| {
            let mut levels = levels;
            if hash {
                levels.push("#");
            }
            (!levels.is_empty()).then(|| levels.join("/"))
        })
    }

    fn group() -> impl Strategy<Value = Option<&'static str>> {
        prop_oneof![2 => Just(None), 1 => Just(Some("g1")), 1 => Just(Some("g2"))]
    }

    /// The naive model: a list of subscriptions, the last subscribe of a (group, filter, key) winning.
    #[derive(Default)]
    struct Model(Vec<Row>);

    impl Model {
        fn position(&self, filter: &str, group: Option<&str>, key: u8) -> Option<usize> {
            self.0.iter().position(|(g, f, k, _)| g.as_deref() == group && f == filter && *k == key)
        }
        fn subscribe(&mut self, filter: &str, group: Option<&str>, key: u8, value: u32) -> Option<u32> {
            match self.position(filter, group, key) {
                Some(i) => Some(std::mem::replace(&mut self.0[i].3, value)),
                None => {
                    self.0.push((group.map(str::to_owned), filter.to_owned(), key, value));
                    None
                }
            }
        }
        fn unsubscribe(&mut self, filter: &str, group: Option<&str>, key: u8) -> Option<u32> {
            self.position(filter, group, key).map(|i| self.0.remove(i).3)
        }
        fn matching(&self, topic: &str) -> Vec<Row> {
            let mut rows: Vec<Row> = self.0.iter().filter(|(_, f, ..)| filter_matches(f, topic)).cloned().collect();
            rows.sort();
            rows
        }
        fn sorted(&self) -> Vec<Row> {
            let mut rows = self.0.clone();
            rows.sort();
            rows
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(String, Option<&'static str>, u8, u32),
        Unsubscribe(String, Option<&'static str>, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (filter(), group(), 0u8..4, any::<u32>()).prop_map(|(f, g, k, v)| Op::Subscribe(f, g, k, v)),
            2 => (filter(), group(), 0u8..4).prop_map(|(f, g, k)| Op::Unsubscribe(f, g, k)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random subscriptions × random topics: the table matches exactly what `filter_matches` says.
        #[test]
        fn matches_equal_the_oracle(
            subscriptions in prop::collection::vec((filter(), group(), 0u8..4, any::<u32>()), 0..30),
            topics in prop::collection::vec(topic(), 1..12),
        ) {
            let mut table = SubscriptionTable::new();
            let mut model = Model::default();
            for (filter, group, key, value) in &subscriptions {
                let replaced = table.subscribe(filter, *group, *key, *value);
                prop_assert_eq!(replaced, model.subscribe(filter, *group, *key, *value));
            }
            prop_assert_eq!(table.len(), model.0.len());
            for topic in &topics {
                prop_assert_eq!(matched(&table, topic), model.matching(topic), "topic {:?}", topic);
            }
        }

        /// Subscribe/unsubscribe sequences leave the table equal to the model, and unsubscribing what is left
        /// prunes the trie back to its root.
        #[test]
        fn subscribe_unsubscribe_follow_the_model(ops in prop::collection::vec(op(), 0..80), topics in prop::collection::vec(topic(), 1..6)) {
            let mut table = SubscriptionTable::new();
            let mut model = Model::default();
            for op in &ops {
                match op {
                    Op::Subscribe(filter, group, key, value) => {
                        prop_assert_eq!(table.subscribe(filter, *group, *key, *value), model.subscribe(filter, *group, *key, *value), "{:?}", op);
                    }
                    Op::Unsubscribe(filter, group, key) => {
                        prop_assert_eq!(table.unsubscribe(filter, *group, key), model.unsubscribe(filter, *group, *key), "{:?}", op);
                    }
                }
                prop_assert_eq!(table.len(), model.0.len());
            }
            prop_assert_eq!(contents(&table), model.sorted());
            for topic in &topics {
                prop_assert_eq!(matched(&table, topic), model.matching(topic), "topic {:?}", topic);
            }
            for (group, filter, key, value) in model.sorted() {
                prop_assert_eq!(table.unsubscribe(&filter, group.as_deref(), &key), Some(value));
            }
            prop_assert!(table.is_empty());
            prop_assert_eq!(table.node_count(), 0);
            assert_pristine(&table.trie);
        }

        /// Retained messages: inserts and removes follow a map, lookups by filter follow `filter_matches`, and
        /// removing everything prunes the trie back to its root.
        #[test]
        fn retained_follows_the_model(
            ops in prop::collection::vec((topic(), prop::option::of(any::<u32>())), 0..60),
            filters in prop::collection::vec(filter(), 1..12),
        ) {
            let mut table = RetainedTable::new();
            let mut model = BTreeMap::new();
            for (topic, value) in &ops {
                match value {
                    Some(value) => prop_assert_eq!(table.insert(topic, *value), model.insert(topic.clone(), *value)),
                    None => prop_assert_eq!(table.remove(topic), model.remove(topic)),
                }
                prop_assert_eq!(table.len(), model.len());
            }
            for filter in &filters {
                let mut found = Vec::new();
                table.for_each_matching(filter, |topic, value| found.push((topic.to_owned(), *value)));
                found.sort();
                let expected: Vec<(String, u32)> = model.iter().filter(|(topic, _)| filter_matches(filter, topic)).map(|(t, v)| (t.clone(), *v)).collect();
                prop_assert_eq!(found, expected, "filter {:?}", filter);
            }
            let topics: BTreeSet<String> = model.keys().cloned().collect();
            for topic in topics {
                prop_assert_eq!(table.remove(&topic), model.remove(&topic));
            }
            prop_assert_eq!(table.len(), 0);
            prop_assert_eq!(table.node_count(), 0);
            assert_pristine(&table.trie);
        }
    }

    /// For information only (no assertion on time): the cost of one match over 100,000 subscriptions shaped like
    /// the platform's (a client per device on `commands/{id}` and `devices/{id}/status`, services on wildcards).
    #[test]
    fn time_per_match_over_100k_subscriptions() {
        const DEVICES: u32 = 50_000;
        let mut table = SubscriptionTable::new();
        let started = Instant::now();
        for id in 0..DEVICES {
            table.subscribe(&format!("commands/dev-{id}"), None, Arc::<str>::from(format!("dev-{id}")), 1u8);
            table.subscribe(&format!("devices/dev-{id}/status"), None, Arc::<str>::from("dashboard"), 1u8);
        }
        for filter in ["sensors/#", "sensors/+/temperature", "devices/+/status", "alerts/+"] {
            table.subscribe(filter, Some("ingest"), Arc::<str>::from("ingester-1"), 1);
            table.subscribe(filter, None, Arc::<str>::from("rules"), 1);
        }
        let built = started.elapsed();
        assert_eq!(table.len(), 2 * DEVICES as usize + 8);
        let topics: Vec<String> = (0..1000)
            .map(|i| match i % 4 {
                0 => format!("sensors/dev-{}/temperature", i * 37 % DEVICES),
                1 => format!("devices/dev-{}/status", i * 37 % DEVICES),
                2 => format!("commands/dev-{}", i * 37 % DEVICES),
                _ => format!("unrelated/dev-{}/x", i),
            })
            .collect();
        let rounds = 100;
        let mut visits = 0usize;
        let started = Instant::now();
        for _ in 0..rounds {
            for topic in &topics {
                table.for_each_match(topic, |_| visits += 1);
            }
        }
        let per_match = started.elapsed() / (rounds * topics.len() as u32);
        assert!(visits > 0);
        eprintln!(
            "SubscriptionTable: {} subscriptions, {} nodes, built in {built:?}; {per_match:?} per match \
             ({} visits over {} matches; unoptimised unless run with --release)",
            table.len(),
            table.node_count(),
            visits,
            rounds as usize * topics.len(),
        );
    }
}
