//! In-memory registry of elders, caregivers' registered profiles and devices,
//! loaded from the store at start-up and written through on every change.

use dashmap::DashMap;
use proto::v1 as pb;

/// Default and largest page of a list call.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, Default)]
pub struct Registry {
    pub elders: DashMap<String, pb::Elder>,
    pub caregivers: DashMap<String, pb::Caregiver>,
    pub devices: DashMap<String, pb::Device>,
}

/// One page of `map` in id order after `token`, and the next token.
pub fn page<V: Clone>(
    map: &DashMap<String, V>,
    keep: impl Fn(&V) -> bool,
    page_size: u32,
    token: &str,
) -> (Vec<V>, String) {
    let size = match page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let mut ids: Vec<String> =
        map.iter().filter(|e| e.key().as_str() > token && keep(e.value())).map(|e| e.key().clone()).collect();
    ids.sort_unstable();
    let more = ids.len() > size;
    ids.truncate(size);
    let next = if more { ids.last().cloned().unwrap_or_default() } else { String::new() };
    let items = ids.iter().filter_map(|id| map.get(id).map(|v| v.clone())).collect();
    (items, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_in_id_order_until_the_end() {
        let map = DashMap::new();
        for i in 0..25 {
            map.insert(format!("E{i:02}"), i);
        }
        let (a, t) = page(&map, |_| true, 10, "");
        assert_eq!(a, (0..10).collect::<Vec<_>>());
        let (b, t) = page(&map, |_| true, 10, &t);
        assert_eq!(b, (10..20).collect::<Vec<_>>());
        let (c, t) = page(&map, |_| true, 10, &t);
        assert_eq!((c.len(), t.as_str()), (5, ""));
        let (odd, _) = page(&map, |v| v % 2 == 1, 0, "");
        assert_eq!(odd.len(), 12);
    }
}
