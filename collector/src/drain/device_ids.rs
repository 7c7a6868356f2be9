//! The devices the shim named: each vCPU's meta ring announces a name with
//! an id of that vCPU's own, and accesses carry the id. The capture keeps
//! one list of names (capture.json's `devices`, the `device` column's
//! dictionary) and maps each vCPU's ids into it.

use std::collections::HashMap;
use std::sync::Arc;

use polars::prelude::PlHashMap;

use crate::write::tables::DeviceList;

pub struct DeviceIds {
    /// Every name, in the order first announced.
    names: DeviceList,
    index: HashMap<String, u32>,
    /// Per vCPU: the shim's id → index in `names`.
    per_vcpu: Vec<PlHashMap<u16, u32>>,
    /// A name was added since `take_new`.
    changed: bool,
}

impl DeviceIds {
    pub fn new(n_vcpus: usize, names: DeviceList) -> DeviceIds {
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        DeviceIds {
            names,
            index,
            per_vcpu: vec![PlHashMap::default(); n_vcpus],
            changed: false,
        }
    }

    /// vCPU `v` announced `name` as its device `id`.
    pub fn announce(&mut self, v: usize, id: u16, name: &str) {
        let index = match self.index.get(name) {
            Some(&i) => i,
            None => {
                let i = self.names.len() as u32;
                Arc::make_mut(&mut self.names).push(name.to_string());
                self.index.insert(name.to_string(), i);
                self.changed = true;
                i
            }
        };
        self.per_vcpu[v].insert(id, index);
    }

    /// The index in `names` of vCPU `v`'s device `id`, if announced.
    pub fn get(&self, v: usize, id: u16) -> Option<u32> {
        self.per_vcpu[v].get(&id).copied()
    }

    pub fn names(&self) -> &DeviceList {
        &self.names
    }

    /// The list, if a name was added since the last call.
    pub fn take_new(&mut self) -> Option<DeviceList> {
        std::mem::take(&mut self.changed).then(|| self.names.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vcpus_ids_map_into_one_list() {
        let mut d = DeviceIds::new(2, Arc::new(vec!["uart".into()]));
        d.announce(0, 7, "uart");
        assert!(d.take_new().is_none(), "uart was known");
        d.announce(1, 7, "systick");
        d.announce(0, 3, "systick");
        assert_eq!(d.take_new().unwrap().as_ref(), &["uart", "systick"]);
        assert_eq!(
            (d.get(0, 7), d.get(1, 7), d.get(0, 3)),
            (Some(0), Some(1), Some(1))
        );
        assert_eq!(d.get(1, 3), None);
    }
}
