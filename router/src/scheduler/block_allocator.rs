//! The router's ledger of the shard's KV blocks: a free list plus an in-use bitmap.
//!
//! Blocks are freed explicitly by the scheduler (the only owner of sequences), which keeps the
//! ledger a plain value the batcher can reason about. The bitmap turns a double free or a free
//! of a foreign id into a typed error instead of silent corruption.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("KV block {0} freed while already free")]
    DoubleFree(u32),
    #[error("KV block {block_id} does not exist (the cache has {num_blocks} blocks)")]
    Unknown { block_id: u32, num_blocks: usize },
}

#[derive(Debug)]
pub struct BlockAllocator {
    /// Free block ids; allocation pops from the end.
    free_block_ids: Vec<u32>,
    is_in_use: Vec<bool>,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        // Reverse so that the first allocations hand out low ids (easier to read in logs).
        let free_block_ids = (0..num_blocks as u32).rev().collect();
        Self {
            free_block_ids,
            is_in_use: vec![false; num_blocks],
        }
    }

    pub fn num_total(&self) -> usize {
        self.is_in_use.len()
    }

    pub fn num_free(&self) -> usize {
        self.free_block_ids.len()
    }

    /// Appends `num_blocks` new block ids to `block_table`, all or nothing.
    pub fn allocate_into(&mut self, num_blocks: usize, block_table: &mut Vec<u32>) -> bool {
        if num_blocks > self.free_block_ids.len() {
            return false;
        }
        let start = self.free_block_ids.len() - num_blocks;
        for &block_id in &self.free_block_ids[start..] {
            self.is_in_use[block_id as usize] = true;
        }
        block_table.extend(self.free_block_ids.drain(start..).rev());
        true
    }

    /// Returns every block of `block_table` to the free list and empties the table. Stops at
    /// the first invalid id (the rest of the table is left in it).
    pub fn free_table(&mut self, block_table: &mut Vec<u32>) -> Result<(), BlockError> {
        while let Some(block_id) = block_table.pop() {
            self.free(block_id)?;
        }
        Ok(())
    }

    fn free(&mut self, block_id: u32) -> Result<(), BlockError> {
        let num_blocks = self.is_in_use.len();
        let in_use = self
            .is_in_use
            .get_mut(block_id as usize)
            .ok_or(BlockError::Unknown {
                block_id,
                num_blocks,
            })?;
        if !*in_use {
            return Err(BlockError::DoubleFree(block_id));
        }
        *in_use = false;
        self.free_block_ids.push(block_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_as_a_table_grows_and_frees_everything() {
        let mut allocator = BlockAllocator::new(5);
        let mut table_a = Vec::new();
        let mut table_b = Vec::new();
        assert!(allocator.allocate_into(1, &mut table_a));
        assert!(allocator.allocate_into(2, &mut table_b));
        assert!(allocator.allocate_into(1, &mut table_a));
        assert_eq!(table_a.len(), 2);
        assert_eq!(table_b.len(), 2);
        assert_eq!(allocator.num_free(), 1);
        let mut all: Vec<u32> = table_a.iter().chain(&table_b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 4, "no block handed out twice");
        allocator.free_table(&mut table_a).expect("valid free");
        allocator.free_table(&mut table_b).expect("valid free");
        assert!(table_a.is_empty() && table_b.is_empty());
        assert_eq!(allocator.num_free(), allocator.num_total());
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut allocator = BlockAllocator::new(3);
        let mut table = vec![];
        assert!(!allocator.allocate_into(4, &mut table));
        assert!(table.is_empty());
        assert_eq!(allocator.num_free(), 3);
        assert!(allocator.allocate_into(3, &mut table));
        assert!(!allocator.allocate_into(1, &mut table));
        assert_eq!(table.len(), 3);
        assert!(allocator.allocate_into(0, &mut table));
    }

    #[test]
    fn freed_blocks_are_reused() {
        let mut allocator = BlockAllocator::new(2);
        let mut first = vec![];
        assert!(allocator.allocate_into(2, &mut first));
        let first_ids = first.clone();
        allocator.free_table(&mut first).expect("valid free");
        let mut second = vec![];
        assert!(allocator.allocate_into(2, &mut second));
        let (mut a, mut b) = (first_ids, second);
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b);
    }

    #[test]
    fn double_free_and_unknown_ids_are_errors() {
        let mut allocator = BlockAllocator::new(2);
        let mut table = vec![];
        assert!(allocator.allocate_into(1, &mut table));
        let block_id = table[0];
        let mut stale_copy = table.clone();
        allocator.free_table(&mut table).expect("valid free");
        assert_eq!(
            allocator.free_table(&mut stale_copy),
            Err(BlockError::DoubleFree(block_id))
        );
        let mut foreign = vec![7];
        assert_eq!(
            allocator.free_table(&mut foreign),
            Err(BlockError::Unknown {
                block_id: 7,
                num_blocks: 2
            })
        );
        assert_eq!(allocator.num_free(), 2);
    }
}
