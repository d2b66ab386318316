//! Linear passes over a manifest's derivation graph: a topological order, the failed inputs that
//! block each derivation, and how many derivations depend on each root cause.
//!
//! A manifest comes from the network: its decoder checks indices, but a cycle is still possible in
//! a hostile one. Every pass here terminates on any graph (a back edge is ignored), never recurses
//! (a 10,000-deep chain is fine) and never indexes out of range.

use crate::revision::Manifest;

/// How many failed inputs are remembered per derivation (the smallest by store path). The first
/// names the blocker; the count saturates here (`FAILED_INPUTS_CAP` means "that many or more").
pub const FAILED_INPUTS_CAP: usize = 16;

/// The inputs of derivation `d` that are in range.
fn inputs(manifest: &Manifest, d: usize) -> impl Iterator<Item = usize> + '_ {
    let n = manifest.drvs.len();
    manifest.drvs[d].inputs.iter().map(|&i| i as usize).filter(move |&i| i < n && i != d)
}

/// The derivations in an order where every input comes before the derivations that use it
/// (post-order of an iterative depth-first walk; O(V+E)). On a cyclic graph the order is still a
/// permutation; the edge that closes a cycle is ignored.
pub(crate) fn topo_order(manifest: &Manifest) -> Vec<u32> {
    let n = manifest.drvs.len();
    // 0 = new, 1 = on the stack, 2 = done.
    let mut mark = vec![0u8; n];
    let mut order = Vec::with_capacity(n);
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if mark[root] != 0 {
            continue;
        }
        mark[root] = 1;
        stack.push((root, 0));
        while let Some(&mut (d, ref mut next)) = stack.last_mut() {
            let ins = &manifest.drvs[d].inputs;
            let mut pushed = None;
            while *next < ins.len() {
                let i = ins[*next] as usize;
                *next += 1;
                if i < n && mark[i] == 0 {
                    pushed = Some(i);
                    break;
                }
            }
            match pushed {
                Some(i) => {
                    mark[i] = 1;
                    stack.push((i, 0));
                }
                None => {
                    mark[d] = 2;
                    order.push(d as u32);
                    stack.pop();
                }
            }
        }
    }
    order
}

/// For every derivation, the failed derivations among its transitive inputs that stop it from being
/// built: up to [`FAILED_INPUTS_CAP`] indices, smallest first (indices follow store path order).
///
/// `failed[d]` and `succeeded[d]` come from the facts. A succeeded derivation blocks nothing
/// above it (its outputs exist, so a failure below it no longer matters); a failed one propagates
/// itself and what blocks it. O((V+E)·cap) at worst, O(V+E) when nothing failed.
pub(crate) fn failed_inputs(
    manifest: &Manifest,
    order: &[u32],
    failed: &[bool],
    succeeded: &[bool],
) -> Vec<Option<Box<[u32]>>> {
    let n = manifest.drvs.len();
    let mut sets: Vec<Option<Box<[u32]>>> = vec![None; n];
    if !failed.iter().any(|&f| f) {
        return sets;
    }
    let mut scratch: Vec<u32> = Vec::new();
    for &d in order {
        let d = d as usize;
        scratch.clear();
        for i in inputs(manifest, d) {
            if succeeded[i] {
                continue;
            }
            if failed[i] {
                scratch.push(i as u32);
            }
            if let Some(s) = &sets[i] {
                scratch.extend_from_slice(s);
            }
        }
        if scratch.is_empty() {
            continue;
        }
        scratch.sort_unstable();
        scratch.dedup();
        scratch.truncate(FAILED_INPUTS_CAP);
        sets[d] = Some(scratch.as_slice().into());
    }
    sets
}

/// Memory budget of one pass of [`dependents`] (bits per derivation times derivations).
const DEPENDENTS_BUDGET_BYTES: usize = 16 << 20;

/// For each of `roots`, how many derivations of the graph depend on it transitively (itself not
/// counted). Exact, with bit-parallel reachability: the roots are taken 64·W at a time, each
/// derivation gets W words of "which of these roots are below me" (OR of its inputs'), and each
/// root's column is counted. Time O((E + V)·R/64 + Σ dependents), memory at most 16 MiB.
pub(crate) fn dependents(manifest: &Manifest, order: &[u32], roots: &[u32]) -> Vec<u64> {
    let n = manifest.drvs.len();
    let mut counts = vec![0u64; roots.len()];
    if n == 0 || roots.is_empty() {
        return counts;
    }
    let words_budget = (DEPENDENTS_BUDGET_BYTES / 8 / n).max(1);
    let words = roots.len().div_ceil(64).min(words_budget);
    let mut bits = vec![0u64; n * words];
    // root_slot[d] = position of d in the current chunk, or u32::MAX.
    let mut slot = vec![u32::MAX; n];
    for (chunk_no, chunk) in roots.chunks(words * 64).enumerate() {
        bits.fill(0);
        for (k, &r) in chunk.iter().enumerate() {
            if (r as usize) < n {
                slot[r as usize] = k as u32;
            }
        }
        let mut acc = vec![0u64; words];
        for &d in order {
            let d = d as usize;
            acc.fill(0);
            let mut any = false;
            for i in inputs(manifest, d) {
                let row = &bits[i * words..(i + 1) * words];
                for (a, b) in acc.iter_mut().zip(row) {
                    *a |= *b;
                }
                let k = slot[i];
                if k != u32::MAX {
                    acc[k as usize / 64] |= 1 << (k % 64);
                }
                any = true;
            }
            if !any {
                continue;
            }
            // A root on a cycle would reach itself: never count it as its own dependent.
            let own = slot[d];
            if own != u32::MAX {
                acc[own as usize / 64] &= !(1 << (own % 64));
            }
            bits[d * words..(d + 1) * words].copy_from_slice(&acc);
            let base = chunk_no * words * 64;
            for (w, &word) in acc.iter().enumerate() {
                let mut word = word;
                while word != 0 {
                    let b = word.trailing_zeros() as usize;
                    word &= word - 1;
                    counts[base + w * 64 + b] += 1;
                }
            }
        }
        for &r in chunk {
            if (r as usize) < n {
                slot[r as usize] = u32::MAX;
            }
        }
    }
    counts
}
