//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) with weights: builds a service's
//! lookup table, slot -> backend. Every backend walks its own permutation of the slots
//! (derived from its address only), so adding or removing one backend moves little more
//! than that backend's share of the slots, and every node builds the same table.

/// A backend as Maglev sees it: a stable name (its address) and a relative weight.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weighted<'a> {
    pub name: &'a [u8],
    pub weight: u32,
}

/// Whether `m` can be a Maglev table size (a prime, so every skip walks all slots).
pub fn valid_table_size(m: u32) -> bool {
    m >= 2
        && (2..)
            .take_while(|d| d * d <= m)
            .all(|d| !m.is_multiple_of(d))
}

/// Builds a table of `m` slots (`m` prime). Entry `i` is the index in `backends` that owns
/// slot `i`; the share of slots follows the weights. Backends of weight 0 get nothing. Empty
/// when no backend has a weight.
pub fn build(backends: &[Weighted<'_>], m: u32) -> Vec<u32> {
    debug_assert!(valid_table_size(m), "Maglev table size must be prime");
    let live: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let m64 = m as u64;
    // (offset, skip) of each live backend's permutation.
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|&i| {
            let name = backends[i].name;
            (
                hash64(name, 0x6d61_676c_6576_3031) % m64,
                hash64(name, 0x736b_6970_7365_6564) % (m64 - 1) + 1,
            )
        })
        .collect();
    let max_weight = live.iter().map(|&i| backends[i].weight).max().unwrap_or(1) as u64;
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u32;
    while filled < m {
        for (j, &i) in live.iter().enumerate() {
            // Weighted turns: a backend takes a slot each time its credit reaches the
            // largest weight, so turns are proportional to weight.
            credit[j] += backends[i].weight as u64;
            if credit[j] < max_weight {
                continue;
            }
            credit[j] -= max_weight;
            let (offset, skip) = perms[j];
            loop {
                let slot = ((offset + next[j] * skip) % m64) as usize;
                next[j] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

/// FNV-1a with a seed, finished with a 64-bit avalanche (two independent hashes per name).
fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("198.19.1.{}:80", 10 + i)).collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for &b in table {
            counts[b as usize] += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn sizes() {
        assert!(valid_table_size(65537));
        assert!(valid_table_size(251));
        assert!(!valid_table_size(65536));
        assert!(!valid_table_size(1));
    }

    #[test]
    fn equal_weights_split_evenly() {
        let n = names(5);
        let b: Vec<_> = n
            .iter()
            .map(|s| Weighted {
                name: s.as_bytes(),
                weight: 1,
            })
            .collect();
        let t = build(&b, 65537);
        for s in shares(&t, 5) {
            assert!((s - 0.2).abs() < 0.002, "{s}");
        }
    }

    #[test]
    fn weights_set_the_shares() {
        let n = names(3);
        let w = [1u32, 2, 3];
        let b: Vec<_> = n
            .iter()
            .zip(w)
            .map(|(s, weight)| Weighted {
                name: s.as_bytes(),
                weight,
            })
            .collect();
        let t = build(&b, 65537);
        for (s, w) in shares(&t, 3).into_iter().zip(w) {
            assert!((s - w as f64 / 6.0).abs() < 0.005, "{s} for weight {w}");
        }
        let zero = [Weighted {
            name: b"a",
            weight: 0,
        }];
        assert!(build(&zero, 251).is_empty());
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        let n = names(10);
        let all: Vec<_> = n
            .iter()
            .map(|s| Weighted {
                name: s.as_bytes(),
                weight: 1,
            })
            .collect();
        let before = build(&all, 65537);
        let after = build(&all[1..], 65537);
        // Indexes shift by one in `after`; compare by name.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 0 && **b != **a + 1)
            .count();
        // Slots of surviving backends that changed owner: Maglev keeps this small.
        assert!(
            moved < 65537 / 50,
            "{moved} slots of surviving backends moved"
        );
    }

    #[test]
    fn order_of_backends_does_not_matter_for_the_owner() {
        let n = names(4);
        let a: Vec<_> = n
            .iter()
            .map(|s| Weighted {
                name: s.as_bytes(),
                weight: 1,
            })
            .collect();
        let mut b = a.clone();
        b.reverse();
        let ta = build(&a, 251);
        let tb = build(&b, 251);
        // Same names own mostly the same slots (ties in turn order can differ).
        let same = ta
            .iter()
            .zip(&tb)
            .filter(|(x, y)| a[**x as usize].name == b[**y as usize].name)
            .count();
        assert!(same > 200, "{same}");
    }
}
