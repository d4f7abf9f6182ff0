//! Per-worker interning of names: devices, metrics, (device, metric) series
//! and dimension tuples become small ids, hashed and compared without
//! touching strings; and the one routing rule for devices.

use compact_str::CompactString;
use rustc_hash::FxHashMap;

use crate::job::{BatchReading, decode_dims};

/// Interns device and metric names, and (device, metric) series: keys
/// become small `Copy` tuples, hashed and compared without touching strings,
/// and series index vectors.
pub(crate) struct Names {
    ids: FxHashMap<CompactString, u32>,
    names: Vec<CompactString>,
    /// `device 0xFF metric` (as batches carry them) → series id.
    pairs: FxHashMap<Box<[u8]>, u32>,
    by_ids: FxHashMap<(u32, u32), u32>,
    /// (device id, metric id) of each series id.
    pub series: Vec<(u32, u32)>,
    /// Encoded dimensions → id; id 0 is "none".
    dim_ids: FxHashMap<Box<[u8]>, u32>,
    dims: Vec<Vec<Option<CompactString>>>,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            ids: FxHashMap::default(),
            names: Vec::new(),
            pairs: FxHashMap::default(),
            by_ids: FxHashMap::default(),
            series: Vec::new(),
            dim_ids: FxHashMap::default(),
            dims: vec![Vec::new()],
        }
    }
}

impl Names {
    /// The id of a batch reading's dimensions (0 when it has none).
    pub fn dims_id(&mut self, encoded: &[u8]) -> u32 {
        if encoded.is_empty() {
            return 0;
        }
        if let Some(&id) = self.dim_ids.get(encoded) {
            return id;
        }
        let id = self.dims.len() as u32;
        self.dims.push(decode_dims(encoded));
        self.dim_ids.insert(encoded.into(), id);
        id
    }

    /// The dimensions of an id from [`Self::dims_id`].
    pub fn dims_of(&self, id: u32) -> &[Option<CompactString>] {
        self.dims.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// The series id of a batch reading.
    pub fn series_of(&mut self, r: &BatchReading<'_>) -> u32 {
        if let Some(&series) = self.pairs.get(r.names) {
            return series;
        }
        let (device, metric) = r.device_and_metric();
        let series = self.series_named(&device, &metric);
        self.pairs.insert(r.names.into(), series);
        series
    }

    pub fn series_named(&mut self, device: &CompactString, metric: &CompactString) -> u32 {
        let ids = (self.id(device), self.id(metric));
        let next = self.series.len() as u32;
        let series = *self.by_ids.entry(ids).or_insert(next);
        if series == next {
            self.series.push(ids);
        }
        series
    }

    /// (device id, metric id) of a series id.
    pub fn ids_of(&self, series: u32) -> (u32, u32) {
        self.series[series as usize]
    }

    pub fn id(&mut self, name: &CompactString) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    pub fn name(&self, id: u32) -> &str {
        self.names
            .get(id as usize)
            .map_or("", CompactString::as_str)
    }

    pub fn compact_name(&self, id: u32) -> CompactString {
        self.names.get(id as usize).cloned().unwrap_or_default()
    }
}

/// The worker that owns `device`'s readings, windows and dedupe keys among
/// `workers`: the one routing rule for devices (exchange, re-sharding of
/// snapshots and of pending Parquet rows).
pub fn device_owner(device: &str, workers: u32) -> u32 {
    (device_hash(device) % u64::from(workers.max(1))) as u32
}

/// A stable hash of the device id: the same worker for a device in every process.
pub(crate) fn device_hash(device: &str) -> u64 {
    // FNV-1a: std's SipHash keys are random per process, which would split a
    // device across workers of different processes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
