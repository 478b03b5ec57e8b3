//! The one owner of the shard's KV blocks: reference-counted blocks, each request's block
//! table, and the prefix cache.
//!
//! A block is *in use* while at least one request's table holds it (its reference count), and
//! *free* otherwise. A full block whose K/V were computed is indexed by a chained hash of the
//! tokens it holds and of every token before it (`BlockHash`), so a later request whose tokens
//! start the same way reuses it instead of recomputing it: prompt prefixes, `n` / `best_of`
//! candidates of one prompt, and the previous turns of a conversation (a finished request's
//! prompt and answer stay indexed). A free indexed block stays reusable until a new allocation
//! needs it; then the least recently freed is evicted first (LRU). Partial blocks are never
//! indexed, so a shared block is never written again.
//!
//! Blocks are keyed by LoRA adapter too: the chain of a request that runs with an adapter
//! starts from that adapter's root hash (`adapter_root_hash`), so the same tokens under two
//! adapters (or an adapter and the base model) never share a block: their K/V differ.
//!
//! Preemption and cancellation `free` a request: that drops its references and never touches
//! a block another request still holds. Hash collisions cannot mix up contents: the hash is
//! 128 bits wide and a lookup compares the block's own tokens as well.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use super::budget::blocks_for_tokens;

/// Chained hash of a full block: its tokens and (through `parent`) every token before them.
pub type BlockHash = u128;

/// The chain hash of the block holding `token_ids` after the block hashed `parent`.
pub fn chain_hash(parent: Option<BlockHash>, token_ids: &[u32]) -> BlockHash {
    // Two SipHash passes with distinct leading words make 128 bits.
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        salt.hash(&mut hasher);
        parent.hash(&mut hasher);
        token_ids.hash(&mut hasher);
        hasher.finish() as u128
    };
    (half(1) << 64) | half(2)
}

/// Where the chain of a request running with LoRA adapter `adapter_id` starts: None for the
/// base model (empty id), else a hash of the name, which no token block hashes to.
pub fn adapter_root_hash(adapter_id: &str) -> Option<BlockHash> {
    if adapter_id.is_empty() {
        return None;
    }
    let half = |salt: u8| {
        let mut hasher = DefaultHasher::new();
        (salt, "lora-adapter", adapter_id).hash(&mut hasher);
        hasher.finish() as u128
    };
    Some((half(1) << 64) | half(2))
}

/// Extends `hashes` (the chain hashes of the first blocks of `token_ids`) to every full block.
/// `root`: the chain's start (`adapter_root_hash`).
pub fn extend_block_hashes(
    hashes: &mut Vec<BlockHash>,
    token_ids: &[u32],
    block_size: usize,
    root: Option<BlockHash>,
) {
    let num_full_blocks = token_ids.len() / block_size;
    while hashes.len() < num_full_blocks {
        let index = hashes.len();
        let tokens = &token_ids[index * block_size..(index + 1) * block_size];
        let hash = chain_hash(hashes.last().copied().or(root), tokens);
        hashes.push(hash);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvCacheError {
    #[error("{needed} KV blocks needed but only {free} are free")]
    NotEnoughBlocks { needed: usize, free: usize },
    #[error("request {0} already has a block table")]
    AlreadyAllocated(u64),
}

/// What a prefix lookup found: the leading blocks of a token sequence that are cached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixHit {
    pub block_ids: Vec<u32>,
    pub num_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvCacheCounters {
    /// Tokens looked up in the prefix cache at admission, and how many of them were cached.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
    /// Cached blocks whose contents were dropped to make room.
    pub evicted_blocks: u64,
}

#[derive(Debug, Clone)]
struct CachedContents {
    hash: BlockHash,
    token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Default)]
struct Block {
    ref_count: u32,
    cached: Option<CachedContents>,
    /// Its key in `evictable` while it is free and cached.
    lru_stamp: Option<u64>,
}

#[derive(Debug, Default)]
struct RequestBlocks {
    block_ids: Vec<u32>,
    /// Leading blocks already indexed (or found to duplicate an indexed block).
    num_hashed_blocks: usize,
}

#[derive(Debug)]
pub struct KvCacheManager {
    block_size: usize,
    is_prefix_caching: bool,
    blocks: Vec<Block>,
    /// Free blocks holding nothing reusable; allocation takes these first (from the end).
    free_uncached: Vec<u32>,
    /// Free blocks still indexed, by the order they were freed (the oldest is evicted first).
    evictable: BTreeMap<u64, u32>,
    next_stamp: u64,
    index: HashMap<BlockHash, u32>,
    tables: HashMap<u64, RequestBlocks>,
    counters: KvCacheCounters,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize, is_prefix_caching: bool) -> Self {
        Self {
            block_size,
            is_prefix_caching,
            blocks: vec![Block::default(); num_blocks],
            // Reversed so that the first allocations hand out low ids (easier to read in logs).
            free_uncached: (0..num_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            next_stamp: 0,
            index: HashMap::new(),
            tables: HashMap::new(),
            counters: KvCacheCounters::default(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn is_prefix_caching(&self) -> bool {
        self.is_prefix_caching
    }

    pub fn num_total_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks an allocation can take: unused ones and cached ones nobody holds.
    pub fn num_free_blocks(&self) -> usize {
        self.free_uncached.len() + self.evictable.len()
    }

    /// Blocks whose contents are indexed for reuse (in use or free).
    pub fn num_cached_blocks(&self) -> usize {
        self.index.len()
    }

    pub fn counters(&self) -> KvCacheCounters {
        self.counters
    }

    pub fn block_table(&self, request_id: u64) -> &[u32] {
        self.tables
            .get(&request_id)
            .map_or(&[], |table| table.block_ids.as_slice())
    }

    pub fn num_blocks_held(&self, request_id: u64) -> usize {
        self.block_table(request_id).len()
    }

    /// The cached leading blocks of `token_ids` (`hashes` = its chain hashes, at least one per
    /// full block). At least one token is always left to compute (its logits give the next
    /// token), so a sequence of whole blocks never hits its last block. Read only.
    pub fn cached_prefix(&self, token_ids: &[u32], hashes: &[BlockHash]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if !self.is_prefix_caching {
            return hit;
        }
        let max_blocks = token_ids.len().saturating_sub(1) / self.block_size;
        for (index, hash) in hashes.iter().take(max_blocks).enumerate() {
            let tokens = &token_ids[index * self.block_size..(index + 1) * self.block_size];
            let Some(&block_id) = self.index.get(hash) else {
                break;
            };
            let same = self.blocks[block_id as usize]
                .cached
                .as_ref()
                .is_some_and(|cached| cached.token_ids == tokens);
            if !same {
                break;
            }
            hit.block_ids.push(block_id);
        }
        hit.num_tokens = hit.block_ids.len() * self.block_size;
        hit
    }

    /// How many of `block_ids` are free now (reusing them takes them from the free blocks).
    pub fn num_free_among(&self, block_ids: &[u32]) -> usize {
        block_ids
            .iter()
            .filter(|&&block_id| self.blocks[block_id as usize].ref_count == 0)
            .count()
    }

    /// Starts `request_id`'s block table with `hit` (from `cached_prefix`, nothing changed
    /// since); returns the cached token count. `num_query_tokens` (the input's length) and the
    /// hit go into the prefix-cache counters.
    pub fn acquire_prefix(
        &mut self,
        request_id: u64,
        hit: PrefixHit,
        num_query_tokens: usize,
    ) -> Result<usize, KvCacheError> {
        if self.tables.contains_key(&request_id) {
            return Err(KvCacheError::AlreadyAllocated(request_id));
        }
        for &block_id in &hit.block_ids {
            self.add_reference(block_id);
        }
        if self.is_prefix_caching {
            self.counters.prefix_query_tokens += num_query_tokens as u64;
            self.counters.prefix_hit_tokens += hit.num_tokens as u64;
        }
        let num_hashed_blocks = hit.block_ids.len();
        self.tables.insert(
            request_id,
            RequestBlocks {
                block_ids: hit.block_ids,
                num_hashed_blocks,
            },
        );
        Ok(hit.num_tokens)
    }

    /// Grows `request_id`'s table to hold `num_tokens` tokens plus `num_lookahead_tokens`
    /// speculative slots; returns the new block ids. All or nothing.
    pub fn allocate_slots(
        &mut self,
        request_id: u64,
        num_tokens: usize,
        num_lookahead_tokens: usize,
    ) -> Result<Vec<u32>, KvCacheError> {
        let num_held = self.num_blocks_held(request_id);
        let needed = blocks_for_tokens(num_tokens + num_lookahead_tokens, self.block_size)
            .saturating_sub(num_held);
        let free = self.num_free_blocks();
        if needed > free {
            return Err(KvCacheError::NotEnoughBlocks { needed, free });
        }
        let new_block_ids: Vec<u32> = (0..needed).map(|_| self.take_free_block()).collect();
        self.tables
            .entry(request_id)
            .or_default()
            .block_ids
            .extend_from_slice(&new_block_ids);
        Ok(new_block_ids)
    }

    /// Indexes the blocks of `request_id` that `num_computed_tokens` computed tokens of
    /// `token_ids` now fill completely (`hashes` as in `cached_prefix`).
    pub fn commit_computed(
        &mut self,
        request_id: u64,
        token_ids: &[u32],
        hashes: &[BlockHash],
        num_computed_tokens: usize,
    ) {
        if !self.is_prefix_caching {
            return;
        }
        let Some(table) = self.tables.get_mut(&request_id) else {
            return;
        };
        let num_full_blocks = (num_computed_tokens / self.block_size)
            .min(table.block_ids.len())
            .min(hashes.len());
        for index in table.num_hashed_blocks..num_full_blocks {
            let hash = hashes[index];
            if self.index.contains_key(&hash) {
                continue; // computed twice (e.g. in one step); the first copy stays indexed
            }
            let block_id = table.block_ids[index];
            let tokens = &token_ids[index * self.block_size..(index + 1) * self.block_size];
            self.blocks[block_id as usize].cached = Some(CachedContents {
                hash,
                token_ids: tokens.to_vec(),
            });
            self.index.insert(hash, block_id);
        }
        table.num_hashed_blocks = table.num_hashed_blocks.max(num_full_blocks);
    }

    /// Drops `request_id`'s references (finished, cancelled or preempted). Its cached blocks
    /// stay reusable; the table's tail is freed first so that it is evicted first.
    pub fn free(&mut self, request_id: u64) {
        let Some(table) = self.tables.remove(&request_id) else {
            return;
        };
        for &block_id in table.block_ids.iter().rev() {
            let block = &mut self.blocks[block_id as usize];
            block.ref_count -= 1;
            if block.ref_count > 0 {
                continue;
            }
            if block.cached.is_some() {
                let stamp = self.next_stamp;
                self.next_stamp += 1;
                block.lru_stamp = Some(stamp);
                self.evictable.insert(stamp, block_id);
            } else {
                self.free_uncached.push(block_id);
            }
        }
    }

    /// For `request_ids` (oldest first): how many blocks become free when each is preempted
    /// after every newer one was. The batcher preempts newest first, so these are exact.
    pub fn blocks_released_newest_first(&self, request_ids: &[u64]) -> Vec<usize> {
        let mut remaining: HashMap<u32, u32> = HashMap::new();
        let mut released = vec![0; request_ids.len()];
        for (position, request_id) in request_ids.iter().enumerate().rev() {
            let mut seen = HashSet::new();
            for &block_id in self.block_table(*request_id) {
                if !seen.insert(block_id) {
                    continue;
                }
                let count = remaining
                    .entry(block_id)
                    .or_insert(self.blocks[block_id as usize].ref_count);
                *count -= 1;
                if *count == 0 {
                    released[position] += 1;
                }
            }
        }
        released
    }

    fn add_reference(&mut self, block_id: u32) {
        let block = &mut self.blocks[block_id as usize];
        if block.ref_count == 0 {
            if let Some(stamp) = block.lru_stamp.take() {
                self.evictable.remove(&stamp);
            }
        }
        block.ref_count += 1;
    }

    /// Pops a free block (callers checked that one exists), evicting the LRU cached one when
    /// no plain free block is left.
    fn take_free_block(&mut self) -> u32 {
        let block_id = match self.free_uncached.pop() {
            Some(block_id) => block_id,
            None => {
                let (_, block_id) = self
                    .evictable
                    .pop_first()
                    .expect("num_free_blocks was checked");
                let block = &mut self.blocks[block_id as usize];
                block.lru_stamp = None;
                if let Some(cached) = block.cached.take() {
                    self.index.remove(&cached.hash);
                }
                self.counters.evicted_blocks += 1;
                block_id
            }
        };
        self.blocks[block_id as usize].ref_count = 1;
        block_id
    }

    /// Every reference is accounted for: held blocks are counted by the tables that hold them,
    /// free ones are in exactly one free list. For tests.
    #[cfg(test)]
    pub fn check_consistency(&self) -> Result<(), String> {
        let mut counts = vec![0u32; self.blocks.len()];
        for table in self.tables.values() {
            for &block_id in &table.block_ids {
                counts[block_id as usize] += 1;
            }
        }
        let free: HashSet<u32> = self
            .free_uncached
            .iter()
            .chain(self.evictable.values())
            .copied()
            .collect();
        if free.len() != self.free_uncached.len() + self.evictable.len() {
            return Err("a block is free twice".into());
        }
        for (block_id, block) in self.blocks.iter().enumerate() {
            if block.ref_count != counts[block_id] {
                return Err(format!(
                    "block {block_id}: ref count {} but {} tables hold it",
                    block.ref_count, counts[block_id]
                ));
            }
            if (block.ref_count == 0) != free.contains(&(block_id as u32)) {
                return Err(format!(
                    "block {block_id}: free list and ref count disagree"
                ));
            }
        }
        for (hash, &block_id) in &self.index {
            let indexed = self.blocks[block_id as usize].cached.as_ref();
            if indexed.map(|cached| cached.hash) != Some(*hash) {
                return Err(format!("index entry for block {block_id} is stale"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "kv_cache_manager_tests.rs"]
mod tests;
