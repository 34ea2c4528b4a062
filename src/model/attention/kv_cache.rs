//! The keys and values one attention layer has produced so far during incremental
//! decoding, in a buffer that doubles when full (up to the model's maximum length), so
//! that a new token costs a copy of its own row, amortised, and memory follows the
//! length decoded rather than the longest the model accepts.

use tch::Tensor;

#[derive(Debug)]
pub struct KvCache {
    /// (B, H, room, Dh); rows 0..len hold data.
    keys: Tensor,
    /// (B, H, room, Dh); rows 0..len hold data.
    values: Tensor,
    len: i64,
    /// The most positions the cache may hold.
    capacity: i64,
}

/// Rows a cache starts with beyond its prompt's.
const FIRST_ROOM: i64 = 256;

impl KvCache {
    /// A cache holding the given rows, which may grow to `capacity` in all.
    ///
    /// # Shapes
    /// `keys`, `values`: (B, H, P, Dh) with P ≤ capacity.
    pub fn new(keys: &Tensor, values: &Tensor, capacity: i64) -> Self {
        let p = keys.size()[2];
        assert!(p <= capacity, "a {p}-token prefix does not fit a {capacity}-token cache");
        let mut cache = Self { keys: keys.shallow_clone(), values: values.shallow_clone(), len: 0, capacity };
        cache.reserve((p + FIRST_ROOM).min(capacity));
        cache.keys.narrow(2, 0, p).copy_(keys);
        cache.values.narrow(2, 0, p).copy_(values);
        cache.len = p;
        cache
    }

    /// Room for `room` rows: new zeroed buffers holding the rows so far.
    fn reserve(&mut self, room: i64) {
        let (b, h, _, dh) = self.keys.size4().unwrap();
        let grown = |old: &Tensor, len: i64| {
            let buffer = Tensor::zeros([b, h, room, dh], (old.kind(), old.device()));
            buffer.narrow(2, 0, len).copy_(&old.narrow(2, 0, len));
            buffer
        };
        self.keys = grown(&self.keys, self.len);
        self.values = grown(&self.values, self.len);
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one position.
    ///
    /// # Shapes
    /// `key`, `value`: (B, H, 1, Dh).
    pub fn push(&mut self, key: &Tensor, value: &Tensor) {
        assert!(self.len < self.capacity, "the decoding cache is full ({} tokens)", self.capacity);
        if self.len == self.keys.size()[2] {
            self.reserve((2 * self.len).min(self.capacity));
        }
        self.keys.narrow(2, self.len, 1).copy_(key);
        self.values.narrow(2, self.len, 1).copy_(value);
        self.len += 1;
    }

    /// Keys and values of positions `start..len`.
    ///
    /// # Shapes
    /// returns two (B, H, len − start, Dh)
    pub fn since(&self, start: i64) -> (Tensor, Tensor) {
        let n = self.len - start;
        (self.keys.narrow(2, start, n), self.values.narrow(2, start, n))
    }

    /// The whole buffers (rows at or past `len` are zeros), for gathering rows by
    /// position.
    ///
    /// # Shapes
    /// returns two (B, H, room ≥ len, Dh)
    pub fn buffers(&self) -> (&Tensor, &Tensor) {
        (&self.keys, &self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn row(i: i64) -> Tensor {
        Tensor::full([1, 2, 1, 3], i as f64, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn the_cache_grows_past_its_first_room_keeping_every_row_in_order() {
        let prompt = Tensor::cat(&(0..5).map(row).collect::<Vec<_>>(), 2); // (1, 2, 5, 3)
        let capacity = 5 + FIRST_ROOM + 40;
        let mut cache = KvCache::new(&prompt, &(&prompt * 2), capacity);
        for i in 5..capacity {
            cache.push(&row(i), &(row(i) * 2));
        }
        assert_eq!(cache.len(), capacity);
        let (keys, values) = cache.since(0);
        let expected = Tensor::arange(capacity, (Kind::Float, Device::Cpu)).view([1, 1, capacity, 1]);
        assert!(keys.equal(&expected.expand([1, 2, capacity, 3], false)));
        assert!(values.equal(&(expected * 2).expand([1, 2, capacity, 3], false)));
        let full = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cache.push(&row(0), &row(0))));
        assert!(full.is_err(), "a push past the capacity must fail");
    }
}
